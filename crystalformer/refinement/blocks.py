"""Dense pair layout: the crystals of a batch grouped into blocks of similar size.

The score network looks at every ordered pair (i, j), i != j, of atoms in the same crystal
(:func:`~crystalformer.refinement.network.pair_index` lists them as an edge list). For inference a
block holds ``b`` crystals of at most ``n`` atoms as a padded (b, n) grid of atom slots, so the
pairs of a crystal are the off-diagonal cells of an (n, n) grid: gathers over edges become
broadcasts and sums over senders become reductions along one axis
(:mod:`~crystalformer.refinement.dense`).

Crystals are sorted by atom count and cut into blocks greedily: a block grows while its padded
pair grid stays within ``max_slots`` cells and within ``max_waste`` times its crystals' own n^2 cells.
Built once per batch (the atoms of a crystal do not change while the sampler integrates).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

MAX_SLOTS = 1 << 13  # padded pair cells b n^2 per block: 2 MB per (b, n, n, 64) float32 grid (stays in cache)
MAX_WASTE = 1.3  # padded cells / real cells (diagonal included) a block may grow to


@dataclass(frozen=True)
class Block:
    """``b`` crystals padded to ``n`` atom slots each."""

    atoms: torch.Tensor  # (b, n) index of each slot's atom in the flat batch; padding slots hold 0
    valid: torch.Tensor  # (b, n) bool, True for real atoms
    real: torch.Tensor  # (V,) atoms of the valid slots, in slot order (atoms[valid])
    crystals: torch.Tensor  # (b,) index of each crystal in the batch
    upper: torch.Tensor  # (T,) flat cells i * n + j of the pairs i < j, T = n (n - 1) / 2
    source: torch.Tensor  # (b n^2,) row of each grid cell in the stacked halves (see ``grid_source``)

    @property
    def size(self) -> int:
        """Atom slots per crystal, n."""
        return int(self.atoms.shape[1])

    def to(self, device) -> Block:
        return replace(self, **{k: v.to(device) for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class CrystalBlocks:
    """All crystals of a batch, each in exactly one block."""

    blocks: tuple[Block, ...]
    num_atoms: int  # N, atoms in the flat batch

    def to(self, device) -> CrystalBlocks:
        return replace(self, blocks=tuple(b.to(device) for b in self.blocks))


def grid_source(n: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat cells of the upper pairs (T,) and where each grid cell of b crystals comes from (b n^2,).

    Per crystal, values of the upper pairs are stacked as rows [upper (T) | reversed (T) | none (1)];
    cell (i, j) of crystal c reads row c (2T + 1) + t for the upper pair t = (i, j), + T + t for the
    reversed pair t = (j, i), + 2T on the diagonal. A gather with ``source`` then fills the grid.
    """
    iu, ju = torch.triu_indices(n, n, 1)  # (T,), (T,)
    T = iu.shape[0]
    row = torch.full((n * n,), 2 * T, dtype=torch.long)  # (n^2,) the diagonal reads the last row
    row[iu * n + ju] = torch.arange(T)
    row[ju * n + iu] = torch.arange(T) + T
    source = (torch.arange(b)[:, None] * (2 * T + 1) + row).reshape(-1)  # (b n^2,)
    return iu * n + ju, source


def group_sizes(counts: list[int], max_slots: int = MAX_SLOTS, max_waste: float = MAX_WASTE) -> list[list[int]]:
    """Crystal indices per block: sorted by size, cut greedily (see the module docstring).

    A crystal larger than ``max_slots`` alone gets a block of its own.
    """
    order = sorted(range(len(counts)), key=lambda b: (counts[b], b))
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for b in order:
        n = counts[b]
        padded = (len(current) + 1) * n * n  # sorted: the new crystal is the largest
        if current and (padded > max_slots or padded > max_waste * (real + n * n)):
            groups.append(current)
            current, real = [], 0
        current.append(b)
        real += n * n
    if current:
        groups.append(current)
    return groups


def _block(members: list[int], counts: list[int], offsets: list[int]) -> Block:
    n = max(counts[b] for b in members)
    slot = torch.arange(n)  # (n,)
    start = torch.tensor([offsets[b] for b in members])  # (b,)
    count = torch.tensor([counts[b] for b in members])  # (b,)
    valid = slot < count[:, None]  # (b, n)
    atoms = torch.where(valid, start[:, None] + slot, torch.zeros_like(slot))  # (b, n)
    upper, source = grid_source(n, len(members))
    return Block(atoms=atoms, valid=valid, real=atoms[valid], crystals=torch.tensor(members), upper=upper,
                 source=source)


def crystal_blocks(atom_batch: torch.Tensor, num_crystals: int, max_slots: int = MAX_SLOTS,
                   max_waste: float = MAX_WASTE) -> CrystalBlocks:
    """Blocks of the crystals of ``atom_batch`` (N,), sorted by crystal; crystals without atoms are left out."""
    counts = torch.bincount(atom_batch.cpu(), minlength=num_crystals).tolist()  # (B,)
    offsets = [0] * num_crystals
    for b in range(1, num_crystals):
        offsets[b] = offsets[b - 1] + counts[b - 1]
    present = [b for b in range(num_crystals) if counts[b]]
    sizes = [counts[b] for b in present]
    groups = [[present[k] for k in g] for g in group_sizes(sizes, max_slots, max_waste)]
    blocks = tuple(_block(g, counts, offsets).to(atom_batch.device) for g in groups)
    return CrystalBlocks(blocks=blocks, num_atoms=int(atom_batch.shape[0]))
