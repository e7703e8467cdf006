"""Structural grammar masks for teacher forcing, computed on the device from small tables.

The model's categorical at a discrete position (space group, Wyckoff letter or [STOP],
element) is normalized over the tokens the grammar's *structural* rules allow there
(:meth:`crystalformer.grammar.Grammar.structural`). Those rules depend on little:

- a space-group choice: the 230 space-group tokens;
- a site choice: [STOP] once one site exists, and, while fewer than ``n_max`` sites exist, the
  Wyckoff letters of the stream's space group from ``start`` on, where ``start`` is the index
  of the last chosen position, plus one if that position has no free parameter (letters are
  non-decreasing and a fixed position holds one orbit);
- an element choice: every element.

So for a batch of streams the masks of all discrete targets come from a running space group
(a cumulative max over the stream: it holds one space-group token), a running site count
(a cumulative sum) and a running ``start`` (a cumulative max, since letters never decrease),
and two look-up tables; no Python loop over crystals or positions. The tables are built from
the Wyckoff tables once per model and live on its device. :meth:`StructuralMasks.target_masks`
equals ``Grammar.masks(ids, composition=False)`` at every discrete target (a test checks it
on real crystals with and without composition prompts).
"""

from __future__ import annotations

import torch

from ..grammar import Grammar
from ..symmetry import space_group
from ..tokenizer import Slot, wyckoff_token

MAX_POSITIONS = 27  # Pmmm has the most Wyckoff positions (a ... z, A)


class StructuralMasks(torch.nn.Module):
    """Device-resident tables for :meth:`target_masks` (non-persistent buffers: no weights in files)."""

    def __init__(self, grammar: Grammar):
        super().__init__()
        V, tok = grammar.V, grammar.tokenizer
        self.n_max, self.stop = grammar.n_max, grammar.stop
        sg_of_token = torch.zeros(V, dtype=torch.long)
        sg_of_token[torch.as_tensor(grammar.sg_ids)] = torch.arange(1, 231)
        # next_start[sg, token]: the first usable position index after choosing that letter in that group
        next_start = torch.zeros(231, V, dtype=torch.long)
        # letters[sg, start]: (V,) the letters of group sg with index >= start
        letters = torch.zeros(231, MAX_POSITIONS + 1, V, dtype=torch.bool)
        for sg in range(1, 231):
            for wp in space_group(sg).wyckoff:
                t = tok.id(wyckoff_token(wp.letter))
                next_start[sg, t] = wp.index + (1 if wp.dof == 0 else 0)
                letters[sg, : wp.index + 1, t] = True
        sg_mask = torch.zeros(V, dtype=torch.bool)
        sg_mask[torch.as_tensor(grammar.sg_ids)] = True
        element_mask = torch.zeros(V, dtype=torch.bool)
        element_mask[torch.as_tensor(grammar.element_ids)] = True
        self.register_buffer("sg_of_token", sg_of_token, persistent=False)
        self.register_buffer("next_start", next_start, persistent=False)
        self.register_buffer("letters", letters, persistent=False)
        self.register_buffer("sg_mask", sg_mask, persistent=False)
        self.register_buffer("element_mask", element_mask, persistent=False)

    def target_masks(self, ids: torch.Tensor, slots: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(N, V) legal tokens for the targets ``ids[b, t]`` (discrete slots only) of streams ``ids`` (B, T)."""
        sg = torch.cummax(self.sg_of_token[ids], dim=1).values  # (B, T) running space group (0 before it)
        is_site = slots == Slot.WYCKOFF  # (B, T)
        n_sites = torch.cumsum(is_site.long(), dim=1) - is_site.long()  # (B, T) sites before each position
        after = torch.where(is_site, self.next_start[sg, ids], torch.zeros_like(ids))  # (B, T)
        start = torch.cummax(after, dim=1).values  # (B, T) inclusive
        start = torch.cat([torch.zeros_like(start[:, :1]), start[:, :-1]], dim=1)  # (B, T) before each position
        target_slot = slots[b, t]  # (N,)
        sg_n, start_n, sites_n = sg[b, t], start[b, t], n_sites[b, t]  # (N,)
        site_rows = self.letters[sg_n, start_n.clamp(max=MAX_POSITIONS)]  # (N, V)
        site_rows = site_rows & (sites_n < self.n_max).unsqueeze(1)  # (N, V)
        site_rows[:, self.stop] = sites_n >= 1
        is_site_target = ((target_slot == Slot.WYCKOFF) | (target_slot == Slot.STOP)).unsqueeze(1)  # (N, 1)
        out = torch.where(is_site_target, site_rows, torch.zeros_like(site_rows))  # (N, V)
        out = out | ((target_slot == Slot.SPACE_GROUP).unsqueeze(1) & self.sg_mask)
        out = out | ((target_slot == Slot.ELEMENT).unsqueeze(1) & self.element_mask)
        return out
