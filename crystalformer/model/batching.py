"""Batches of token streams for the model: padding (:func:`collate`) and teacher-forcing masks.

Pure torch and numpy: the model, the training data module and the samplers all batch streams
the same way, without the model depending on Lightning.
"""

from __future__ import annotations

import numpy as np
import torch

from ..grammar import Grammar


def collate(examples: list[dict], pad_id: int = 0, grammar=None) -> dict[str, torch.Tensor]:
    """Pad to the longest stream in the batch.

    Returns ids (B, T) long (``pad_id`` after the end), values (B, T) float32 (0 there),
    slots (B, T) long (``Slot.PAD`` = 0 there), mask (B, T) bool (True on real tokens),
    num_atoms (B,) long; with a ``grammar`` also allowed (B, T, V) bool, the legal tokens
    before each position (what the model's masked categorical needs; computed here so that
    DataLoader workers do it).
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    B = len(examples)
    T = max(len(e["ids"]) for e in examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    values = torch.zeros((B, T), dtype=torch.float32)
    slots = torch.zeros((B, T), dtype=torch.long)  # Slot.PAD == 0
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e["ids"])
        ids[b, :n] = torch.as_tensor(e["ids"], dtype=torch.long)
        values[b, :n] = torch.as_tensor(e["values"], dtype=torch.float32)
        slots[b, :n] = torch.as_tensor(e["slots"], dtype=torch.long)
        mask[b, :n] = True
    num_atoms = torch.tensor([e["num_atoms"] for e in examples], dtype=torch.long)  # (B,)
    batch = {"ids": ids, "values": values, "slots": slots, "mask": mask, "num_atoms": num_atoms}
    if grammar is not None:
        batch["allowed"] = grammar_masks(grammar, ids, mask)
    return batch


def grammar_masks(grammar: Grammar, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, V) bool: structurally legal tokens before each position of each stream; True on padding.

    The composition prompt is context, not a mask (:meth:`Grammar.structural`): the model learns
    to respect it, and samplers condition on it exactly (CSP, DESIGN section 6).
    """
    B, T = ids.shape
    out = np.ones((B, T, grammar.V), dtype=bool)
    ids_np = ids.cpu().numpy()
    lengths = valid.sum(1).cpu().numpy()
    for b in range(B):
        n = int(lengths[b])
        out[b, :n] = grammar.masks(ids_np[b, :n], composition=False)
    return torch.from_numpy(out)
