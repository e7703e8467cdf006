"""Input features of each position and the per-token lookup tables they need.

Per position (DESIGN section 5): token embedding + slot-type embedding + learned position;
fractional coordinates enter through Fourier features sin/cos(2 pi k x), k = 1..n_fourier;
lattice values through a small MLP of the transformed value (log length, (angle - 90) / 30);
the space-group embedding is added to the space-group position and every position after it
(CrystalFormer's trick: every later decision sees the symmetry directly); Wyckoff positions
also see their multiplicity in that space group.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..symmetry import LETTERS, space_group
from ..tokenizer import CrystalTokenizer, Slot
from .distributions import to_axis

MAX_MULTIPLICITY = 192  # general position of Fm-3m and friends


class TokenTables(nn.Module):
    """Buffers mapping token ids to what they mean: slot, space group, Wyckoff letter, lattice kind."""

    def __init__(self, tokenizer: CrystalTokenizer):
        super().__init__()
        V = tokenizer.vocab_size
        vocab = tokenizer.vocab
        slot = torch.tensor([int(tokenizer.token_slot(i)) for i in range(V)], dtype=torch.long)
        sg_of = torch.zeros(V, dtype=torch.long)
        letter_of = torch.full((V,), -1, dtype=torch.long)
        is_length = torch.zeros(V, dtype=torch.bool)
        for i, word in enumerate(vocab):
            if slot[i] == Slot.SPACE_GROUP:
                sg_of[i] = int(word[2:])
            elif slot[i] == Slot.WYCKOFF:
                letter_of[i] = LETTERS.index(word[2:])
            elif word in ("L_a", "L_b", "L_c"):
                is_length[i] = True
        mult = torch.zeros((231, len(LETTERS)), dtype=torch.long)  # (sg, letter index) -> multiplicity
        for n in range(1, 231):
            for wp in space_group(n).wyckoff:
                mult[n, wp.index] = wp.multiplicity
        self.register_buffer("slot", slot, persistent=False)  # (V,)
        self.register_buffer("sg_of", sg_of, persistent=False)  # (V,) 0 unless a space-group token
        self.register_buffer("letter_of", letter_of, persistent=False)  # (V,) -1 unless a Wyckoff token
        self.register_buffer("is_length", is_length, persistent=False)  # (V,)
        self.register_buffer("multiplicity", mult, persistent=False)  # (231, 27)

    def running_space_group(self, ids: torch.Tensor, sg_prev: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) space group seen at or before each position (0 before it), continuing ``sg_prev`` (B,)."""
        sg, _ = self.sg_of[ids].cummax(dim=1)  # (B, T)
        if sg_prev is not None:
            sg = torch.maximum(sg, sg_prev[:, None])
        return sg


class InputEmbedding(nn.Module):
    def __init__(self, config: ModelConfig, tables: TokenTables):
        super().__init__()
        d = config.d_model
        self.tables = tables
        self.token = nn.Embedding(config.vocab_size, d)
        self.slot = nn.Embedding(len(Slot), d)
        self.position = nn.Embedding(config.max_len, d)
        self.space_group = nn.Embedding(231, d)  # row 0: not yet known
        self.multiplicity = nn.Embedding(MAX_MULTIPLICITY + 1, d)
        self.register_buffer("freqs", fourier_frequencies(config.n_fourier), persistent=False)  # (F,)
        self.coord = nn.Linear(2 * config.n_fourier, d)
        self.lattice = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
        self.max_len = config.max_len

    def forward(self, ids: torch.Tensor, values: torch.Tensor, slots: torch.Tensor, start: int = 0,
                sg_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C) input vectors of positions start .. start + T - 1, and the (B, T) running space group."""
        B, T = ids.shape
        if start + T > self.max_len:
            raise ValueError(f"a token stream of {start + T} positions exceeds the model's max_len {self.max_len}")
        pos = torch.arange(start, start + T, device=ids.device)  # (T,)
        x = self.token(ids) + self.slot(slots) + self.position(pos)[None]  # (B, T, C)
        sg = self.tables.running_space_group(ids, sg_prev)  # (B, T)
        x = x + self.space_group(sg) * (sg > 0).unsqueeze(-1)  # (B, T, C)
        letter = self.tables.letter_of[ids]  # (B, T)
        mult = self.tables.multiplicity[sg, letter.clamp_min(0)] * (letter >= 0)  # (B, T)
        x = x + self.multiplicity(mult.clamp_max(MAX_MULTIPLICITY)) * (mult > 0).unsqueeze(-1)
        v = values.float()
        angle = v.unsqueeze(-1) * self.freqs  # (B, T, F)
        fourier = torch.cat([angle.sin(), angle.cos()], dim=-1)  # (B, T, 2F)
        x = x + self.coord(fourier) * (slots == Slot.COORD).unsqueeze(-1)
        y, _ = to_axis(v, self.tables.is_length[ids])  # (B, T)
        is_lattice = slots == Slot.LATTICE  # (B, T)
        x = x + self.lattice(torch.where(is_lattice, y, 0.0).unsqueeze(-1)) * is_lattice.unsqueeze(-1)
        return x, sg


def fourier_frequencies(n: int) -> torch.Tensor:
    """2 pi k for k = 1..n (float32)."""
    return 2 * math.pi * torch.arange(1, n + 1, dtype=torch.float32)
