"""The pure-torch model: transformer with KV cache, hybrid heads, exact log-likelihood, model files."""

from __future__ import annotations

from .batching import collate, grammar_masks
from .crystalformer import CrystalFormer, LogProb
from .files import load_model, save_model
from .transformer import KVCache

__all__ = ["CrystalFormer", "KVCache", "LogProb", "collate", "grammar_masks", "load_model", "save_model"]
