"""crystalformer: a space-group-aware generative transformer for crystal structures.

The public API is imported lazily: ``import crystalformer`` does no work.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Crystal": "crystalformer.crystal",
    "Site": "crystalformer.crystal",
    "CrystalError": "crystalformer.errors",
    "CrystalTokenizer": "crystalformer.tokenizer",
    "Grammar": "crystalformer.grammar",
    "PrepareConfig": "crystalformer.data",
    "prepare": "crystalformer.data",
    "load_prepared": "crystalformer.data",
    "space_group": "crystalformer.symmetry",
    "CrystalFormer": "crystalformer.model",
    "load_model": "crystalformer.model",
    "ModelConfig": "crystalformer.config",
    "TrainConfig": "crystalformer.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crystalformer' has no attribute {name!r}")
