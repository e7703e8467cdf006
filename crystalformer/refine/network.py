"""Score network s_phi(z, sigma, L, atoms): periodic, O(3)-invariant message passing (pure torch).

Inputs per pair (i, j) of atoms in the same crystal: atom features h_i, h_j; the Gram matrix
L L^T (invariant under rotations and reflections of the Cartesian frame); Fourier features
sin/cos(2 pi k (x_j - x_i)) of the fractional difference (periodic, and invariant under a global
shift of all fractional coordinates). Messages are averaged per atom with ``index_add_`` on batch
indices (no compiled scatter extension). Output: a per-atom fractional score (N, 3) divided by
sigma (NCSN parameterization: the network predicts sigma * score, which is O(1) for every sigma).
Cost: all ordered pairs, sum_b N_b (N_b - 1) edges per call.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import NetworkConfig


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


def pair_index(atom_batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i, j), i != j, within each crystal; atom_batch (N,) sorted by crystal."""
    counts = torch.bincount(atom_batch)  # (B,)
    offsets = torch.cumsum(counts, 0) - counts  # (B,)
    src, dst = [], []
    for n, off in zip(counts.tolist(), offsets.tolist()):
        idx = torch.arange(n, device=atom_batch.device) + off
        i = idx.repeat_interleave(n)  # (n*n,)
        j = idx.repeat(n)  # (n*n,)
        keep = i != j
        src.append(i[keep])
        dst.append(j[keep])
    return torch.cat(src), torch.cat(dst)


class ScoreNetwork(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        H = config.hidden
        self.embed = nn.Embedding(config.max_z + 1, H)
        self.sigma_mlp = _mlp(2 * config.n_sigma_freq, H, H)
        n_edge = 2 * H + 9 + 6 * config.n_freq
        self.edge_mlps = nn.ModuleList([_mlp(n_edge, H, H) for _ in range(config.n_layers)])
        self.node_mlps = nn.ModuleList([_mlp(2 * H, H, H) for _ in range(config.n_layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(H) for _ in range(config.n_layers)])
        self.out = nn.Sequential(nn.LayerNorm(H), _mlp(H, H, 3))
        self.register_buffer("freqs", torch.arange(1, config.n_freq + 1, dtype=torch.float32), persistent=False)

    def _sigma_features(self, sigma: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, self.config.n_sigma_freq + 1, dtype=sigma.dtype, device=sigma.device)  # (F,)
        s = torch.log(sigma).unsqueeze(-1) * k / 2  # (B, F): log sigma spans ~[-5.3, -0.7]
        return torch.cat([torch.sin(s), torch.cos(s)], -1)  # (B, 2F)

    def forward(self, frac: torch.Tensor, sigma: torch.Tensor, lattice: torch.Tensor, species: torch.Tensor,
                atom_batch: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """frac (N, 3), sigma (B,), lattice (B, 3, 3) rows = vectors in Å, species (N,), atom_batch (N,) -> (N, 3)."""
        i, j = pair_index(atom_batch) if pairs is None else pairs
        dtype = frac.dtype
        h = self.embed(species.clamp(max=self.config.max_z)) + self.sigma_mlp(self._sigma_features(sigma))[atom_batch]
        gram = lattice @ lattice.transpose(1, 2)  # (B, 3, 3), L L^T
        # scale lengths^2 by the cell's mean squared length so features stay O(1)
        gram = gram / gram.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-8)[:, None, None]  # (B, 3, 3)
        gram_e = gram.reshape(-1, 9)[atom_batch[i]]  # (E, 9)
        d = frac[j] - frac[i]  # (E, 3)
        ang = 2 * math.pi * d.unsqueeze(-1) * self.freqs.to(dtype)  # (E, 3, F)
        four = torch.cat([torch.sin(ang), torch.cos(ang)], -1).reshape(d.shape[0], -1)  # (E, 6F)
        deg = torch.zeros(frac.shape[0], dtype=dtype, device=frac.device)
        deg.index_add_(0, i, torch.ones_like(i, dtype=dtype))
        deg = deg.clamp(min=1).unsqueeze(-1)  # (N, 1)
        for edge_mlp, node_mlp, norm in zip(self.edge_mlps, self.node_mlps, self.norms):
            hn = norm(h)
            m = edge_mlp(torch.cat([hn[i], hn[j], gram_e, four], -1))  # (E, H)
            agg = torch.zeros_like(h).index_add_(0, i, m) / deg  # (N, H)
            h = h + node_mlp(torch.cat([hn, agg], -1))
        return self.out(h) / sigma[atom_batch].unsqueeze(-1)  # (N, 3)
