"""Crystals as tensors for refinement: free Wyckoff parameters <-> atoms of every orbit.

The state is the free parameters ``u`` of every site, padded to 3 columns (S, 3) with a
mask (S, 3). Each atom a of site s has an affine image x_a = R_a u_s + t_a (R_a is the
(3, k) rotation part of its Wyckoff operation, padded to (3, 3) with zero columns). So
- noise drawn on u and mapped through R_a moves every image consistently (DiffCSP++);
- a per-atom score s_a (fractional) is projected onto u with the pseudo-inverse of R_a and
  averaged over the orbit: for an orbit that is symmetric this is the exact chain rule up to
  the factor 1/m (d/du sum_a log p = sum_a R_a^T s_a; with R_a^+ = (R^T R)^-1 R^T);
- after every sampler step the orbit is rebuilt exactly from u: space group, Wyckoff letters
  and elements are kept by construction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..crystal import Crystal, Site
from ..elements import atomic_number
from ..symmetry.tables import space_group
from .wrapped import wrap


@dataclass
class RefineBatch:
    """A batch of crystals: sites (S rows), atoms (N rows), crystals (B)."""

    u: torch.Tensor  # (S, 3) free parameters, padded with 0
    mask: torch.Tensor  # (S, 3) 1 where the column is a free parameter
    site_batch: torch.Tensor  # (S,) crystal of each site
    atom_site: torch.Tensor  # (N,) site of each atom
    atom_batch: torch.Tensor  # (N,) crystal of each atom
    rot: torch.Tensor  # (N, 3, 3) rotation part acting on padded u
    trans: torch.Tensor  # (N, 3) translation part
    pinv: torch.Tensor  # (N, 3, 3) pseudo-inverse of rot (padded rows are 0)
    species: torch.Tensor  # (N,) atomic numbers
    lattice: torch.Tensor  # (B, 3, 3) lattice vectors as rows, Å
    num_atoms: torch.Tensor  # (B,)

    @property
    def num_crystals(self) -> int:
        return int(self.lattice.shape[0])

    def to(self, device) -> RefineBatch:
        return replace(self, **{k: v.to(device) for k, v in self.__dict__.items()})

    def with_u(self, u: torch.Tensor) -> RefineBatch:
        return replace(self, u=u)

    def frac(self, u: torch.Tensor | None = None) -> torch.Tensor:
        """Atoms (N, 3) of every orbit rebuilt from u, wrapped into [0, 1). Differentiable in u."""
        u = self.u if u is None else u
        x = torch.einsum("nij,nj->ni", self.rot, u[self.atom_site]) + self.trans  # (N, 3)
        return wrap(x)

    def project(self, atom_score: torch.Tensor) -> torch.Tensor:
        """Per-atom scores (N, 3) -> free-parameter scores (S, 3), orbit average of R^+ s."""
        per_atom = torch.einsum("nij,nj->ni", self.pinv, atom_score)  # (N, 3)
        out = torch.zeros(self.u.shape, dtype=atom_score.dtype, device=atom_score.device)
        out.index_add_(0, self.atom_site, per_atom)
        count = torch.zeros(self.u.shape[0], dtype=atom_score.dtype, device=atom_score.device)
        count.index_add_(0, self.atom_site, torch.ones_like(self.atom_site, dtype=atom_score.dtype))
        return out / count.clamp(min=1).unsqueeze(-1) * self.mask

    def noise(self, sigma_sites: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """u + sigma eps on the free parameters only, wrapped; sigma_sites (S, 1)."""
        eps = torch.randn(self.u.shape, generator=generator, dtype=self.u.dtype, device=self.u.device)
        return wrap(self.u + sigma_sites * eps * self.mask) * self.mask


@functools.cache
def _position_tensors(space_group_number: int, letter: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rot (m, 3, 3), trans (m, 3), pinv (m, 3, 3)) of a Wyckoff position; cached (read-only arrays)."""
    wp = space_group(space_group_number).position(letter)
    k = wp.dof
    rot = np.zeros((wp.multiplicity, 3, 3))
    rot[:, :, :k] = wp.orbit_rotations
    pinv = np.zeros((wp.multiplicity, 3, 3))
    if k:
        pinv[:, :k, :] = np.linalg.pinv(wp.orbit_rotations)  # (m, k, 3)
    trans = np.array(wp.orbit_translations, dtype=float)  # (m, 3)
    for a in (rot, trans, pinv):
        a.flags.writeable = False
    return rot, trans, pinv


def collate(crystals: list[Crystal], dtype=torch.float32) -> RefineBatch:
    """Tensors of a list of crystals (conventional cells, the Wyckoff tables' setting)."""
    from pymatgen.core import Lattice

    if not crystals:
        raise ValueError("collate needs at least one crystal")
    u, mask, site_batch, atom_site, atom_batch, rots, transs, pinvs, species, lats, nat = ([] for _ in range(11))
    s_index = 0
    for b, crystal in enumerate(crystals):
        sg = space_group(crystal.space_group)
        n = 0
        for site in crystal.sites:
            wp = sg.position(site.letter)
            row = np.zeros(3)
            row[: wp.dof] = site.params
            u.append(row)
            mask.append([1.0] * wp.dof + [0.0] * (3 - wp.dof))
            site_batch.append(b)
            rot, trans, pinv = _position_tensors(crystal.space_group, site.letter)
            rots.append(rot)
            transs.append(trans)
            pinvs.append(pinv)
            atom_site.extend([s_index] * wp.multiplicity)
            atom_batch.extend([b] * wp.multiplicity)
            species.extend([atomic_number(site.element)] * wp.multiplicity)
            s_index += 1
            n += wp.multiplicity
        lats.append(Lattice.from_parameters(*crystal.lattice).matrix)
        nat.append(n)
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
    i = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    return RefineBatch(u=f(u), mask=f(mask), site_batch=i(site_batch), atom_site=i(atom_site),
                       atom_batch=i(atom_batch), rot=f(np.concatenate(rots)), trans=f(np.concatenate(transs)),
                       pinv=f(np.concatenate(pinvs)), species=i(species), lattice=f(lats), num_atoms=i(nat))


def crystals_from_u(crystals: list[Crystal], u: torch.Tensor) -> list[Crystal]:
    """New crystals with the same space group, letters, elements and lattice; free parameters from u."""
    u = wrap(u.detach().to("cpu", torch.float64)).numpy()
    out, s = [], 0
    for crystal in crystals:
        sites = []
        for site in crystal.sites:
            k = len(site.params)
            params = tuple(float(round(v, 10)) % 1.0 for v in u[s, :k])
            sites.append(Site(site.letter, site.element, params))
            s += 1
        out.append(Crystal(crystal.space_group, tuple(sites), crystal.lattice))
    return out
