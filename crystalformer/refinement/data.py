"""Crystals for refiner training: CSV / CIF inputs (prepared and cached) or prepared directories."""

from __future__ import annotations

from pathlib import Path

import torch

from ..crystal import Crystal
from .symmetry import collate


def load_crystals(inputs, cache_dir=None, max_atoms: int | None = None, progress: bool = False) -> list[Crystal]:
    """Every kept crystal of ``inputs`` (paths); crystals with more than ``max_atoms`` atoms are skipped."""
    from ..data import PrepareConfig, as_prepared, default_cache_dir, load_prepared

    paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"refiner data {p}: file or folder not found")
    dirs = as_prepared(paths, cache_dir or default_cache_dir(), PrepareConfig(), progress=progress)
    out = []
    for d in dirs:
        prepared = load_prepared(d)
        for i in range(len(prepared)):
            c = prepared.crystal(i)
            if max_atoms is None or c.num_atoms <= max_atoms:
                out.append(c)
    return out


class CrystalList(torch.utils.data.Dataset):
    def __init__(self, crystals: list[Crystal]):
        self.crystals = crystals

    def __len__(self) -> int:
        return len(self.crystals)

    def __getitem__(self, i: int) -> Crystal:
        return self.crystals[i]


def loader(crystals: list[Crystal], batch_size: int, shuffle: bool, seed: int, num_workers: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(CrystalList(crystals), batch_size=batch_size, shuffle=shuffle, generator=g,
                                       collate_fn=collate, num_workers=num_workers)
