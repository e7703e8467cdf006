"""Site score network: one receiver per Wyckoff site, periodic neighbours within a cutoff.

The all-pairs network (:mod:`.network`) scores every atom of the conventional cell against every
other, N^2 pairs per crystal, and then averages the scores back over each orbit. This network
scores the free parameters from a much smaller graph, with nothing lost to the smaller graph:

- **Invariant features only.** Messages see the two sites' features and the bond length (Gaussian
  radial features times a cosine envelope that reaches 0 at ``cutoff``); nothing depends on the
  Cartesian frame or on the fractional axes. Every space-group operation is an isometry that maps
  the crystal onto itself, so all atoms of an orbit have the same features: one receiver per
  Wyckoff site (its first atom) stands for the whole orbit, and the senders are every atom of the
  cell and its lattice images within ``cutoff`` (feature vector of the sender's site).
- **An equivariant output.** The site's displacement is a weighted sum of its bond vectors,
  v = sum_j w_ij r_ij (Cartesian, Å), with invariant scalar weights. It is fractional as
  v L^-1 and lies in the site's free directions (it is invariant under the site symmetry), so
  the free-parameter displacement is R^+ v L^-1 for the receiver's Wyckoff matrix R (exact, and
  the same for any atom of the orbit). Divided by sigma it is the normalized score of the free
  parameters u, as the DSM objective wants (the noise lives on u).

Cost: sum over sites of their neighbours within ``cutoff``, instead of sum_b N_b^2. The second
linear layer of every message MLP commutes with the (envelope-weighted) sum over senders, so it
runs once per site, not once per edge. At inference, bonds of one receiver to one sender site
with the same length (to :data:`BOND_QUANTUM` Å: a shell of symmetry-equivalent neighbours) share
one message, computed once and counted; training computes every bond.

Neighbour lists (:func:`site_graph`) are built with vectorized image enumeration. At inference a
:class:`NeighbourCache` builds them with ``cutoff + skin`` and reuses them while no atom has
moved more than skin / 2 since (the usual Verlet rule): pairs that can come within ``cutoff``
are all in the list, and the envelope is exactly 0 beyond it, so reusing a list changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import NetworkConfig
from .network import mlp, sigma_features
from .symmetry import RefineBatch

MAX_CANDIDATES = 1 << 21  # (site, atom, image) candidates measured at once while building a list
SKIN = 0.75  # Å: neighbour lists at inference reach cutoff + SKIN and last until an atom moves SKIN / 2
BOND_QUANTUM = 1e-4  # Å: at inference, bonds of one receiver and sender site this close in length share a message
MAX_IMAGES = 6  # lattice images per axis and direction at most (a cell thinner than cutoff / 6 Å sees fewer)


def _bond_classes(receiver: torch.Tensor, send_site: torch.Tensor, length: torch.Tensor,
                  num_sites: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bonds with the same receiver, sender site and length (to :data:`BOND_QUANTUM` Å).

    Returns (first (C,) bond of each class, class of every bond (E,), bonds per class (C,)).
    Symmetry makes such classes common: the bonds of an atom to one shell of equivalent
    neighbours, and the same for every receiver that stands for an orbit.
    """
    E = receiver.shape[0]
    if E == 0:
        return receiver, receiver, receiver
    q = torch.round(length.squeeze(1) / BOND_QUANTUM).long()
    key = (receiver * num_sites + send_site) * (int(q.max()) + 1) + q
    classes, inverse, count = torch.unique(key, return_inverse=True, return_counts=True)
    first = torch.full((classes.shape[0],), E, dtype=torch.long, device=receiver.device)
    first.scatter_reduce_(0, inverse, torch.arange(E, device=receiver.device), "amin")
    return first, inverse, count


def site_representatives(atom_site: torch.Tensor, num_sites: int) -> torch.Tensor:
    """Index of the first atom of each site (S,); ``atom_site`` (N,) is sorted by site."""
    return torch.searchsorted(atom_site, torch.arange(num_sites, device=atom_site.device))


@dataclass(frozen=True)
class SiteGraph:
    """Bonds from each site's representative atom to the atoms (and images) around it."""

    receiver: torch.Tensor  # (E,) site
    receiver_atom: torch.Tensor  # (E,) the site's representative atom
    sender: torch.Tensor  # (E,) atom
    vector: torch.Tensor  # (E, 3) Cartesian bond (Å) from receiver to sender image when the list was built
    positions: torch.Tensor  # (N, 3) fractional atoms the list was built at
    radius: float  # Å: every bond shorter than this (at ``positions``) is listed


def _image_reach(lattice: torch.Tensor, radius: float) -> torch.Tensor:
    """Images k per axis (B, 3) such that every vector shorter than ``radius`` has |n_a| <= k_a.

    A Cartesian r = x L (rows of L the lattice vectors) has fractional x = r L^-1, so
    |x_a| <= |r| |column a of L^-1|; the centred difference adds at most 1/2.
    """
    inv = torch.linalg.inv(lattice.double())  # (B, 3, 3)
    reach = (radius * inv.norm(dim=1)).nan_to_num(0.0, posinf=MAX_IMAGES)  # (B, 3): column norms
    return torch.floor(reach + 0.5).clamp(0, MAX_IMAGES).long()


def site_graph(x: torch.Tensor, lattice: torch.Tensor, atom_batch: torch.Tensor, site_batch: torch.Tensor,
               reps: torch.Tensor, radius: float) -> SiteGraph:
    """Every bond shorter than ``radius`` Å from a site's representative to an atom or its image.

    x (N, 3) fractional atoms, lattice (B, 3, 3) rows in Å, atom_batch (N,), site_batch (S,) sorted
    by crystal, reps (S,) representative atom of each site. The atom itself (image 0) is left out.
    """
    device = x.device
    x = x.detach()
    B = lattice.shape[0]
    n_atoms = torch.bincount(atom_batch, minlength=B)  # (B,)
    n_sites = torch.bincount(site_batch, minlength=B)  # (B,)
    atom_start = torch.cumsum(n_atoms, 0) - n_atoms
    site_start = torch.cumsum(n_sites, 0) - n_sites
    per = n_sites * n_atoms  # (B,) (site, atom) pairs per crystal
    crystal = torch.repeat_interleave(torch.arange(B, device=device), per)  # (P,)
    p = torch.arange(int(per.sum()), device=device) - (torch.cumsum(per, 0) - per)[crystal]
    site = p // n_atoms[crystal] + site_start[crystal]  # (P,)
    atom = p % n_atoms[crystal] + atom_start[crystal]  # (P,)
    d = x[atom] - x[reps[site]]
    d = d - torch.round(d)  # (P, 3) centred fractional difference
    reach = _image_reach(lattice, radius)  # (B, 3)
    receivers, senders, vectors = [], [], []
    for k in torch.unique(reach, dim=0).tolist():
        group = torch.nonzero((reach == torch.tensor(k, device=device)).all(1)).squeeze(1)  # crystals
        members = torch.nonzero(torch.isin(crystal, group)).squeeze(1)  # (P_g,)
        axes = [torch.arange(-ka, ka + 1, device=device, dtype=x.dtype) for ka in k]
        images = torch.cartesian_prod(*axes).reshape(-1, 3)  # (I, 3)
        zero = (images == 0).all(1)  # (I,)
        step = max(1, MAX_CANDIDATES // images.shape[0])
        for lo in range(0, members.shape[0], step):
            m = members[lo: lo + step]
            dd = d[m][:, None, :] + images[None]  # (p, I, 3)
            cart = torch.einsum("pia,pab->pib", dd, lattice[crystal[m]])  # (p, I, 3)
            keep = cart.norm(dim=-1) < radius  # (p, I)
            keep &= ~(zero[None] & (atom[m] == reps[site[m]])[:, None])  # not the atom itself
            pi, ii = torch.nonzero(keep, as_tuple=True)
            receivers.append(site[m][pi])
            senders.append(atom[m][pi])
            vectors.append(cart[pi, ii])
    if receivers:
        receiver, sender, vector = torch.cat(receivers), torch.cat(senders), torch.cat(vectors)
        order = torch.argsort(receiver * (x.shape[0] + 1) + sender, stable=True)  # same order, any grouping
        receiver, sender, vector = receiver[order], sender[order], vector[order]
    else:
        receiver = sender = torch.zeros(0, dtype=torch.long, device=device)
        vector = x.new_zeros((0, 3))
    return SiteGraph(receiver=receiver, receiver_atom=reps[receiver], sender=sender, vector=vector,
                     positions=x.clone(), radius=radius)


class NeighbourCache:
    """Neighbour lists of one batch at inference, rebuilt only where atoms have moved far enough.

    Lists are built with ``cutoff + skin`` and kept while every atom is within skin / 2 of where
    it was (Cartesian, minimum image). When atoms of some crystals have moved further, the lists
    of those crystals alone are built again. ``builds`` counts the (partial) builds.
    """

    def __init__(self, batch: RefineBatch, cutoff: float, skin: float | None = None):
        self.batch, self.cutoff, self.skin = batch, cutoff, SKIN if skin is None else skin
        self.reps = site_representatives(batch.atom_site, batch.u.shape[0])
        self.graph: SiteGraph | None = None
        self.builds = 0

    def graph_at(self, x: torch.Tensor) -> tuple[SiteGraph, torch.Tensor]:
        """The list for atoms ``x`` (N, 3) and every atom's Cartesian move since it was listed (N, 3)."""
        b = self.batch
        if self.graph is None:
            self.graph = site_graph(x, b.lattice, b.atom_batch, b.site_batch, self.reps, self.cutoff + self.skin)
            self.builds += 1
            return self.graph, moved_since(self.graph, x, b)
        moved = moved_since(self.graph, x, b)
        far = moved.detach().norm(dim=-1) > self.skin / 2  # (N,)
        if not bool(far.any()):
            return self.graph, moved
        self.graph = self._rebuilt(x, torch.unique(b.atom_batch[far]))
        self.builds += 1
        return self.graph, moved_since(self.graph, x, b)

    def _rebuilt(self, x: torch.Tensor, crystals: torch.Tensor) -> SiteGraph:
        """The list with the bonds of ``crystals`` (sorted indices) built again at ``x``."""
        b, g = self.batch, self.graph
        device = x.device
        atoms = torch.nonzero(torch.isin(b.atom_batch, crystals)).squeeze(1)  # (n,) ascending
        sites = torch.nonzero(torch.isin(b.site_batch, crystals)).squeeze(1)  # (s,) ascending
        local_crystal = torch.full((b.num_crystals,), -1, dtype=torch.long, device=device)
        local_crystal[crystals] = torch.arange(crystals.shape[0], device=device)
        local_atom = torch.full((x.shape[0],), -1, dtype=torch.long, device=device)
        local_atom[atoms] = torch.arange(atoms.shape[0], device=device)
        part = site_graph(x[atoms], b.lattice[crystals], local_crystal[b.atom_batch[atoms]],
                          local_crystal[b.site_batch[sites]], local_atom[self.reps[sites]], self.cutoff + self.skin)
        keep = ~torch.isin(b.site_batch[g.receiver], crystals)
        receiver = torch.cat([g.receiver[keep], sites[part.receiver]])
        sender = torch.cat([g.sender[keep], atoms[part.sender]])
        vector = torch.cat([g.vector[keep], part.vector])
        order = torch.argsort(receiver * (x.shape[0] + 1) + sender, stable=True)
        positions = g.positions.clone()
        positions[atoms] = x[atoms].detach()
        return SiteGraph(receiver=receiver[order], receiver_atom=self.reps[receiver[order]], sender=sender[order],
                         vector=vector[order], positions=positions, radius=g.radius)


def moved_since(graph: SiteGraph, x: torch.Tensor, batch: RefineBatch) -> torch.Tensor:
    """Cartesian displacement (N, 3) of every atom from where ``graph`` was built (nearest image)."""
    moved = x - graph.positions
    return torch.einsum("na,nab->nb", moved - torch.round(moved), batch.lattice[batch.atom_batch])


class SiteScoreNetwork(nn.Module):
    """Normalized free-parameter scores (S, 3) from invariant messages over periodic neighbours."""

    site_level = True

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        H, R, K = config.hidden, config.n_rbf, config.edge_hidden
        self.embed = nn.Embedding(config.max_z + 1, H)
        self.sigma_mlp = mlp(2 * config.n_sigma_freq, H, H)
        self.edge_mlps = nn.ModuleList([mlp(2 * H + R, K, H) for _ in range(config.n_layers)])
        self.node_mlps = nn.ModuleList([mlp(2 * H, H, H) for _ in range(config.n_layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(H) for _ in range(config.n_layers)])
        self.out_norm = nn.LayerNorm(H)
        self.edge_out = mlp(2 * H + R, K, 1)
        self.register_buffer("rbf_centres", torch.linspace(0.0, config.cutoff, R), persistent=False)

    def inference_pairs(self, batch: RefineBatch, skin: float | None = None) -> NeighbourCache:
        """What :func:`~.api.refine_crystals` passes to every call on ``batch``: a neighbour cache."""
        return NeighbourCache(batch, self.config.cutoff, skin)

    @staticmethod
    def _first_layer(block: nn.Sequential, hn: torch.Tensor, receiver: torch.Tensor, send_site: torch.Tensor,
                     radial: torch.Tensor) -> torch.Tensor:
        """Pre-activations (E, K) of ``block``'s first layer on cat(hn_i, hn_j, rbf_ij), split by columns:
        the site parts are computed once per site, the radial part (``radial``) once per call for all layers."""
        H = hn.shape[1]
        first = block[0]
        w = first.weight  # (K, 2H + R)
        z = torch.index_select(hn @ w[:, H: 2 * H].T, 0, send_site)  # (E, K)
        return z.add_(torch.index_select(torch.addmm(first.bias, hn, w[:, :H].T), 0, receiver)).add_(radial)

    def _messages(self, block: nn.Sequential, hn: torch.Tensor, receiver: torch.Tensor, send_site: torch.Tensor,
                  radial: torch.Tensor, env: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """sum_j env_ij block(hn_i, hn_j, rbf_ij) / (1 + sum_j env_ij) per site (S, H_out).

        The second layer commutes with the weighted sum, so it acts on the summed hidden units.
        """
        z = self._first_layer(block, hn, receiver, send_site, radial)  # (E, K)
        if torch.is_grad_enabled():  # training: autograd needs z and act as they were
            act = nn.functional.silu(z) * env  # (E, K)
        else:
            act = nn.functional.silu(z, inplace=True).mul_(env)
        summed = hn.new_zeros((hn.shape[0], act.shape[1])).index_add_(0, receiver, act)  # (S, K)
        second = block[2]
        return torch.addmm(weight * second.bias, summed, second.weight.T) / (1 + weight)

    def forward(self, batch: RefineBatch, u: torch.Tensor, sigma: torch.Tensor,
                pairs: NeighbourCache | SiteGraph | None = None) -> torch.Tensor:
        """Normalized scores (S, 3) of the free parameters u (S, 3) at noise sigma (B,), masked.

        pairs: a :class:`NeighbourCache` (inference), a :class:`SiteGraph` built at these atoms, or
        None (a list is built here, as in training).
        """
        cfg = self.config
        S = u.shape[0]
        x = batch.frac(u)  # (N, 3), differentiable in u
        reps = site_representatives(batch.atom_site, S)
        if isinstance(pairs, NeighbourCache):
            graph, moved = pairs.graph_at(x)
        else:
            if isinstance(pairs, SiteGraph):
                graph = pairs
            else:
                graph = site_graph(x, batch.lattice, batch.atom_batch, batch.site_batch, reps, cfg.cutoff)
            moved = moved_since(graph, x, batch)
        vec = graph.vector + moved[graph.sender] - moved[graph.receiver_atom]  # (E, 3) Å, the bond now
        length = vec.norm(dim=-1, keepdim=True)  # (E, 1)
        inside = torch.nonzero(length.squeeze(1) < cfg.cutoff).squeeze(1)  # a cached list reaches further
        receiver, sender, vec, length = graph.receiver[inside], graph.sender[inside], vec[inside], length[inside]
        env = 0.5 * (torch.cos(math.pi * length / cfg.cutoff) + 1)  # (E, 1): 1 at 0, 0 (and flat) at cutoff
        send_site = batch.atom_site[sender]  # (E,)
        weight = x.new_zeros((S, 1)).index_add_(0, receiver, env)  # (S, 1) sum of envelopes
        # messages depend on (receiver, sender site, length) only: at inference, bonds that share them
        # (an orbit's bonds to one shell of neighbours) are computed once and counted
        first, inverse, count = _bond_classes(receiver, send_site, length, S) if not torch.is_grad_enabled() \
            else (None, None, None)
        if first is not None:
            c_receiver, c_send, c_length, c_env = receiver[first], send_site[first], length[first], \
                env[first] * count.unsqueeze(1).to(env.dtype)
        else:
            c_receiver, c_send, c_length, c_env = receiver, send_site, length, env
        width = cfg.cutoff / max(1, cfg.n_rbf - 1)
        rbf = torch.exp(-(((c_length - self.rbf_centres.to(x.dtype)) / width) ** 2))  # (C, R)
        H = cfg.hidden
        layers = [*self.edge_mlps, self.edge_out]
        radial_w = torch.cat([block[0].weight[:, 2 * H:] for block in layers], 0)  # (L K + K, R)
        radial = (rbf @ radial_w.T).split([block[0].weight.shape[0] for block in layers], 1)  # per layer (C, K)
        h = self.embed(batch.species[reps].clamp(max=cfg.max_z)) \
            + self.sigma_mlp(sigma_features(sigma, cfg.n_sigma_freq))[batch.site_batch]  # (S, H)
        for edge_mlp, node_mlp, norm, rad in zip(self.edge_mlps, self.node_mlps, self.norms, radial):
            hn = norm(h)
            agg = self._messages(edge_mlp, hn, c_receiver, c_send, rad, c_env, weight)  # (S, H)
            h = h + node_mlp(torch.cat([hn, agg], -1))
        hn = self.out_norm(h)
        z = self._first_layer(self.edge_out, hn, c_receiver, c_send, radial[-1])  # (C, K)
        second = self.edge_out[2]
        a = nn.functional.silu(z) @ second.weight.T + second.bias  # (C, 1) scalar bond weights
        a = (a if inverse is None else a[inverse]) * env  # (E, 1)
        disp = x.new_zeros((S, 3)).index_add_(0, receiver, a * vec) / (1 + weight)  # (S, 3) Å
        frac = torch.einsum("sa,sab->sb", disp, torch.linalg.inv(batch.lattice)[batch.site_batch])  # (S, 3)
        free = torch.einsum("sij,sj->si", batch.pinv[reps], frac)  # (S, 3) displacement of u
        return free / sigma[batch.site_batch].unsqueeze(-1) * batch.mask
