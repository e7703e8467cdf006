"""The score network evaluated block by block on dense pair grids (inference speed).

Computes the same function as the edge-list forward of
:class:`~crystalformer.refinement.network.ScoreNetwork` (equal up to float rounding), rearranged:

- the first linear layer of every edge MLP acts on cat(h_i, h_j, gram, fourier, rbf); split by
  input columns, the h_i, h_j and gram parts are computed once per atom (not once per edge)
  and broadcast over the (n, n) pair grid of a block (:mod:`~crystalformer.refinement.blocks`);
- the fourier and rbf parts are computed once per unordered pair {i, j}: reversing a pair
  negates d = x_j - x_i, which flips the sign of the sine features and keeps the cosine and
  radial ones, so a reversed pair's pre-activation is Q - P where the pair's is Q + P;
- the messages' second linear layer commutes with the sum over senders: it is applied to the
  summed hidden units of each atom (N rows) instead of every edge (E rows);
- the edge output pulls the Gram matrix out of the sum over senders (G sum_j b_ij d~_ij).

Cells that are no pair (the diagonal i = j, padding slots) get the pre-activation ``OFF``,
whose SiLU is exactly 0, and a zero bond vector, so they add nothing to any sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .blocks import Block, CrystalBlocks

if TYPE_CHECKING:
    from .network import ScoreNetwork

OFF = -1e30  # pre-activation of a cell without a pair: SiLU(OFF) = OFF * sigmoid(OFF) = -0.0 (float32/64)


@dataclass(frozen=True)
class SplitLinear:
    """The first linear layer of an edge MLP, by the input columns it multiplies."""

    receiver: torch.Tensor  # (H_out, H) columns of h_i
    sender: torch.Tensor  # (H_out, H) columns of h_j
    gram: torch.Tensor  # (H_out, 9) columns of the scaled Gram matrix
    odd: torch.Tensor  # (H_out, 3F) columns of sin(2 pi k d), ordered (axis, k)
    even: torch.Tensor  # (H_out, 3F + R) columns of cos(2 pi k d) (axis, k), then the radial features
    bias: torch.Tensor  # (H_out,)


def split_linear(linear: nn.Linear, hidden: int, n_freq: int) -> SplitLinear:
    """Columns of ``linear`` acting on cat(h_i (H), h_j (H), gram (9), fourier (3 x [sin F, cos F]), rbf (R))."""
    w = linear.weight  # (H_out, 2H + 9 + 6F + R)
    H, F = hidden, n_freq
    start = 2 * H + 9
    four = w[:, start: start + 6 * F].reshape(-1, 3, 2, F)  # (H_out, axis, sin|cos, k)
    odd = four[:, :, 0].reshape(-1, 3 * F)  # (H_out, 3F)
    even = torch.cat([four[:, :, 1].reshape(-1, 3 * F), w[:, start + 6 * F:]], 1)  # (H_out, 3F + R)
    return SplitLinear(receiver=w[:, :H], sender=w[:, H: 2 * H], gram=w[:, 2 * H: start], odd=odd, even=even,
                       bias=linear.bias)


@dataclass(frozen=True)
class BlockGeometry:
    """Pair features of one block: computed once per network call, shared by every layer."""

    odd: torch.Tensor  # (b, T, 3F) sine features of the upper pairs i < j
    even: torch.Tensor  # (b, T, 3F + R) cosine and radial features of the upper pairs
    dmin: torch.Tensor  # (b, n, n, 3) minimum-image x_j - x_i, zero where there is no pair
    gram: torch.Tensor  # (b, 9) Gram matrix scaled to unit mean diagonal
    off: torch.Tensor  # (b, n, 1) 0 for real atoms, OFF for padding slots


def scaled_gram(lattice: torch.Tensor) -> torch.Tensor:
    """L L^T (b, 3, 3) divided by its mean diagonal, as the network's gram features."""
    gram = lattice @ lattice.transpose(1, 2)  # (b, 3, 3)
    return gram / gram.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-8)[:, None, None]


def block_geometry(net: ScoreNetwork, x: torch.Tensor, lattice: torch.Tensor, valid: torch.Tensor,
                   block: Block) -> BlockGeometry:
    """Features of the pairs of a block: x (b, n, 3) fractional, lattice (b, 3, 3), valid (b, n)."""
    b, n, _ = x.shape
    dtype = x.dtype
    d = x[:, None, :, :] - x[:, :, None, :]  # (b, n, n, 3): [b, i, j] = x_j - x_i
    dmin = d - torch.round(d)  # (b, n, n, 3)
    pair = (valid[:, :, None] & valid[:, None, :]).unsqueeze(-1)  # (b, n, n, 1)
    d_up = d.reshape(b, n * n, 3)[:, block.upper]  # (b, T, 3)
    dmin_up = dmin.reshape(b, n * n, 3)[:, block.upper]  # (b, T, 3)
    ang = 2 * math.pi * d_up.unsqueeze(-1) * net.freqs.to(dtype)  # (b, T, 3, F)
    length = torch.einsum("bta,bac->btc", dmin_up, lattice).norm(dim=-1, keepdim=True)  # (b, T, 1) Å
    width = net.config.rbf_max / max(1, net.config.n_rbf - 1)
    rbf = torch.exp(-(((length - net.rbf_centres.to(dtype)) / width) ** 2))  # (b, T, R)
    odd = torch.sin(ang).reshape(b, -1, 3 * net.config.n_freq)  # (b, T, 3F)
    even = torch.cat([torch.cos(ang).reshape(b, -1, 3 * net.config.n_freq), rbf], -1)  # (b, T, 3F + R)
    off = torch.zeros(valid.shape, dtype=dtype, device=x.device).masked_fill_(~valid, OFF).unsqueeze(-1)
    return BlockGeometry(odd=odd, even=even, dmin=dmin * pair, gram=scaled_gram(lattice).reshape(b, 9), off=off)


def pair_grid(geo: BlockGeometry, split: SplitLinear, block: Block) -> torch.Tensor:
    """The fourier and radial part of the pre-activations on the (n, n) grid: (b, n, n, H_out).

    Upper pair (i, j): Q + P; the reversed pair (j, i): Q - P (sine features are odd in d);
    the diagonal: OFF.
    """
    b, n, T = geo.off.shape[0], block.size, block.upper.shape[0]
    odd = geo.odd @ split.odd.T  # (b, T, H_out): P
    even = geo.even @ split.even.T  # (b, T, H_out): Q
    H = odd.shape[-1]
    halves = torch.empty((b, 2 * T + 1, H), dtype=odd.dtype, device=odd.device)  # [Q + P | Q - P | OFF]
    torch.add(even, odd, out=halves[:, :T])
    torch.sub(even, odd, out=halves[:, T: 2 * T])
    halves[:, 2 * T] = OFF
    return halves.view(-1, H).index_select(0, block.source).view(b, n, n, H)


def edge_activations(hn: torch.Tensor, split: SplitLinear, geo: BlockGeometry, block: Block) -> torch.Tensor:
    """SiLU of the first edge layer for every cell of the grid: (b, n, n, H_out), 0 where no pair.

    hn (b, n, H): normalized atom features.
    """
    receiver = hn @ split.receiver.T + (geo.gram @ split.gram.T + split.bias)[:, None] + geo.off  # (b, n, H_out)
    sender = hn @ split.sender.T + geo.off  # (b, n, H_out)
    z = pair_grid(geo, split, block)  # (b, n, n, H_out)
    z.add_(receiver[:, :, None]).add_(sender[:, None])
    return nn.functional.silu(z, inplace=True)


def split_edge_layers(net: ScoreNetwork) -> list[SplitLinear]:
    """The split first layers of every message MLP, then of the edge output MLP."""
    H, F = net.config.hidden, net.config.n_freq
    return [split_linear(mlp[0], H, F) for mlp in [*net.edge_mlps, net.edge_out]]


def block_forward(net: ScoreNetwork, x: torch.Tensor, sigma: torch.Tensor, lattice: torch.Tensor,
                  species: torch.Tensor, block: Block, splits: list[SplitLinear] | None = None) -> torch.Tensor:
    """Normalized scores (b, n, 3) of one block: x (b, n, 3), sigma (b,), lattice (b, 3, 3), species (b, n).

    splits: :func:`split_edge_layers` of ``net`` (computed here when not given). Rows of padding
    slots are finite and meaningless.
    """
    cfg = net.config
    splits = split_edge_layers(net) if splits is None else splits
    valid = block.valid
    geo = block_geometry(net, x, lattice, valid, block)
    senders = (valid.sum(1) - 1).clamp(min=0).to(x.dtype)[:, None, None]  # (b, 1, 1) pairs per receiver
    deg = senders.clamp(min=1)  # (b, 1, 1)
    h = net.embed(species.clamp(max=cfg.max_z)) + net.sigma_mlp(net._sigma_features(sigma))[:, None]  # (b, n, H)
    for edge_mlp, node_mlp, norm, split in zip(net.edge_mlps, net.node_mlps, net.norms, splits):
        hn = norm(h)  # (b, n, H)
        act = edge_activations(hn, split, geo, block)  # (b, n, n, H)
        out = edge_mlp[2]
        agg = (act.sum(2) @ out.weight.T + senders * out.bias) / deg  # (b, n, H) mean message
        h = h + node_mlp(torch.cat([hn, agg], -1))
    hn = net.out_norm(h)
    act = edge_activations(hn, splits[-1], geo, block)  # (b, n, n, H)
    ab = net.edge_out[2](act)  # (b, n, n, 2) scalar edge weights (the bias too on non-pairs: dmin is 0 there)
    along = (ab[..., :1] * geo.dmin).sum(2)  # (b, n, 3)
    across = torch.einsum("bxy,bny->bnx", geo.gram.view(-1, 3, 3), (ab[..., 1:] * geo.dmin).sum(2))  # (b, n, 3)
    vec = (along + across) / deg  # (b, n, 3)
    return net.out(h) + vec / sigma[:, None, None]


def dense_forward(net: ScoreNetwork, frac: torch.Tensor, sigma: torch.Tensor, lattice: torch.Tensor,
                  species: torch.Tensor, blocks: CrystalBlocks) -> torch.Tensor:
    """The network's normalized scores (N, 3) of a flat batch, one block at a time.

    frac (N, 3), sigma (B,), lattice (B, 3, 3), species (N,); ``blocks`` from
    :func:`~crystalformer.refinement.blocks.crystal_blocks` of the batch's atom_batch.
    """
    out = frac.new_zeros((blocks.num_atoms, 3))  # (N, 3)
    splits = split_edge_layers(net)
    for block in blocks.blocks:
        y = block_forward(net, frac[block.atoms], sigma[block.crystals], lattice[block.crystals],
                          species[block.atoms], block, splits)  # (b, n, 3)
        out[block.real] = y[block.valid]
    return out
