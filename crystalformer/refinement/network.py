"""Score network ``kind="pairs"``: periodic, O(3)-invariant message passing over atom pairs (pure torch).

(The ``kind="sites"`` network, one receiver per Wyckoff site and neighbours within a cutoff, is
:mod:`.radius`.)

Returns the *normalized* fractional score t = s / sqrt(lambda(sigma)) per atom (N, 3), where
lambda(sigma) = E|s_target|^2 per coordinate (see :class:`~crystalformer.refinement.model.Refiner`,
which multiplies it back). The DSM objective normalized by lambda is then a plain unit-scale MSE for
every sigma, as in DiffCSP (Jiao et al. 2023), whose network predicts the normalized score.
(Dividing by sigma instead, the NCSN rule, mis-scales the top of the schedule: at sigma = 0.5 the
wrapped normal is nearly flat, lambda = 0.004 instead of 1/sigma^2 = 4, so an O(1) network output
costs ~30^2 in normalized loss and those steps' gradients swamp the rest.)

Pair features (i, j in the same crystal, i != j): atom features h_i, h_j; the Gram matrix L L^T
scaled to unit mean diagonal; Fourier features sin/cos(2 pi k d) of the fractional difference
d = x_j - x_i; Gaussian radial features of the Cartesian length of the minimum-image difference
d~ = d - round(d) (absolute Å: bond lengths are what a collision is about). All are invariant
under rotations/reflections of the Cartesian frame and under global fractional shifts.

Output t_i = head(h_i) + (1 / sigma) mean_j [a_ij d~_ij + b_ij G~ d~_ij] with scalar edge weights
a, b from the last layer (G~ the scaled Gram matrix, so G~ d~ is the fractional form of a
Cartesian bond vector). The edge term is a learned pair "force" along bonds; divided by sigma it
predicts (x0 - z) / sigma ~ -eps with O(1) weights, where a plain per-atom head would need a gain
of 1 / sigma (200 at sigma_min = 0.005) to read a 0.005 displacement off its inputs.
Cost: all ordered pairs, sum_b N_b (N_b - 1) edges per call. ``pairs`` may be an edge list
(:func:`pair_index`, used for training) or :class:`~crystalformer.refinement.blocks.CrystalBlocks`
(dense pair grids, :mod:`~crystalformer.refinement.dense`: the same function, several times faster).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import CrystalBlocks
from .config import NetworkConfig

Pairs = tuple[torch.Tensor, torch.Tensor] | CrystalBlocks  # an edge list (i, j) or dense blocks


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


def sigma_features(sigma: torch.Tensor, n_freq: int) -> torch.Tensor:
    """Fourier features (B, 2 n_freq) of log sigma (B,), shared by both score networks."""
    k = torch.arange(1, n_freq + 1, dtype=sigma.dtype, device=sigma.device)  # (F,)
    s = torch.log(sigma).unsqueeze(-1) * k / 2  # (B, F): log sigma spans ~[-5.3, -0.7]
    return torch.cat([torch.sin(s), torch.cos(s)], -1)  # (B, 2F)


def pair_index(atom_batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i, j), i != j, within each crystal; atom_batch (N,) sorted by crystal.

    Vectorized: pair p of crystal b is (row, col) of its n_b x (n_b - 1) off-diagonal grid.
    """
    device = atom_batch.device
    counts = torch.bincount(atom_batch)  # (B,)
    offsets = torch.cumsum(counts, 0) - counts  # (B,)
    per = counts * (counts - 1)  # (B,) ordered pairs per crystal
    crystal = torch.repeat_interleave(torch.arange(len(counts), device=device), per)  # (E,)
    start = torch.cumsum(per, 0) - per  # (B,)
    p = torch.arange(int(per.sum()), device=device) - start[crystal]  # (E,) pair number within its crystal
    m = (counts - 1)[crystal]  # (E,)
    row, col = p // m, p % m
    col = col + (col >= row).long()  # skip the diagonal
    return row + offsets[crystal], col + offsets[crystal]


class ScoreNetwork(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        H = config.hidden
        self.embed = nn.Embedding(config.max_z + 1, H)
        self.sigma_mlp = mlp(2 * config.n_sigma_freq, H, H)
        n_edge = 2 * H + 9 + 6 * config.n_freq + config.n_rbf
        self.edge_mlps = nn.ModuleList([mlp(n_edge, H, H) for _ in range(config.n_layers)])
        self.node_mlps = nn.ModuleList([mlp(2 * H, H, H) for _ in range(config.n_layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(H) for _ in range(config.n_layers)])
        self.out = nn.Sequential(nn.LayerNorm(H), mlp(H, H, 3))
        self.out_norm = nn.LayerNorm(H)
        self.edge_out = mlp(n_edge, H, 2)
        nn.init.zeros_(self.edge_out[-1].weight)  # start as the plain per-atom head
        nn.init.zeros_(self.edge_out[-1].bias)
        self.register_buffer("freqs", torch.arange(1, config.n_freq + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("rbf_centres", torch.linspace(0.0, config.rbf_max, config.n_rbf), persistent=False)

    def _sigma_features(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma_features(sigma, self.config.n_sigma_freq)

    def forward(self, frac: torch.Tensor, sigma: torch.Tensor, lattice: torch.Tensor, species: torch.Tensor,
                atom_batch: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        """frac (N, 3), sigma (B,), lattice (B, 3, 3) rows = vectors in Å, species (N,), atom_batch (N,) -> (N, 3).

        pairs: the edge list of ``atom_batch`` (default: all of them) or its dense blocks (inference
        only: under ``torch.no_grad()``).
        """
        if isinstance(pairs, CrystalBlocks):
            if torch.is_grad_enabled():
                raise RuntimeError("dense pair blocks are for inference: call under torch.no_grad(), "
                                   "or pass the edge list (pair_index) to train")
            from .dense import dense_forward

            return dense_forward(self, frac, sigma, lattice, species, pairs)
        i, j = pair_index(atom_batch) if pairs is None else pairs
        dtype = frac.dtype
        h = self.embed(species.clamp(max=self.config.max_z)) + self.sigma_mlp(self._sigma_features(sigma))[atom_batch]
        gram = lattice @ lattice.transpose(1, 2)  # (B, 3, 3), L L^T
        # scale lengths^2 by the cell's mean squared length so features stay O(1)
        gram = gram / gram.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-8)[:, None, None]  # (B, 3, 3)
        eb = atom_batch[i]  # (E,) crystal of each edge
        gram_e = gram.reshape(-1, 9)[eb]  # (E, 9)
        d = frac[j] - frac[i]  # (E, 3)
        ang = 2 * math.pi * d.unsqueeze(-1) * self.freqs.to(dtype)  # (E, 3, F)
        four = torch.cat([torch.sin(ang), torch.cos(ang)], -1).reshape(d.shape[0], -1)  # (E, 6F)
        dmin = d - torch.round(d)  # (E, 3) minimum-image fractional difference
        length = torch.einsum("ea,eab->eb", dmin, lattice[eb]).norm(dim=-1, keepdim=True)  # (E, 1) Å
        width = self.config.rbf_max / max(1, self.config.n_rbf - 1)
        rbf = torch.exp(-(((length - self.rbf_centres.to(dtype)) / width) ** 2))  # (E, n_rbf)
        geo = torch.cat([gram_e, four, rbf], -1)  # (E, 9 + 6F + n_rbf)
        deg = torch.zeros(frac.shape[0], dtype=dtype, device=frac.device)
        deg.index_add_(0, i, torch.ones_like(i, dtype=dtype))
        deg = deg.clamp(min=1).unsqueeze(-1)  # (N, 1)
        for edge_mlp, node_mlp, norm in zip(self.edge_mlps, self.node_mlps, self.norms):
            hn = norm(h)
            m = edge_mlp(torch.cat([hn[i], hn[j], geo], -1))  # (E, H)
            agg = torch.zeros_like(h).index_add_(0, i, m) / deg  # (N, H)
            h = h + node_mlp(torch.cat([hn, agg], -1))
        hn = self.out_norm(h)
        ab = self.edge_out(torch.cat([hn[i], hn[j], geo], -1))  # (E, 2) scalar edge weights
        gd = torch.einsum("eab,eb->ea", gram[eb], dmin)  # (E, 3) fractional form of the Cartesian bond
        vec = ab[:, :1] * dmin + ab[:, 1:] * gd  # (E, 3)
        vec = torch.zeros_like(frac).index_add_(0, i, vec) / deg  # (N, 3)
        return self.out(h) + vec / sigma[atom_batch].unsqueeze(-1)  # (N, 3) normalized score
