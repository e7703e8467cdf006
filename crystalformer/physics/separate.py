"""Push overlapping atoms apart before a potential sees them.

Decoded crystals sometimes hold two atoms far closer than any bond (0.02-0.7 Å in raw samples of
the default model). A universal potential was never trained there and can pull such atoms
together instead of apart: relaxed with CHGNet, every raw mp_20 sample in a 40-crystal subset
that started with atoms under 0.71 Å collapsed to atoms under 0.45 Å. So before relaxing, atoms
closer than ``scale`` x (sum of covalent radii) are pushed apart by a soft-sphere repulsion

    E = k/2 * sum over pairs with d < d0 of (d0 - d)^2,   d0 = scale * (r_i + r_j),

which is zero for every pair already farther apart, so a sensible structure is left exactly as
it is. :class:`SoftSpheres` is an ASE calculator (energy, forces, stress), so the push runs
under the same symmetry constraint and cell filter as the relaxation that follows.
"""

from __future__ import annotations

import numpy as np

from . import require

SCALE = 0.7  # x (sum of covalent radii): the distance pushed to
STIFFNESS = 10.0  # eV/Å^2


def contact_ratio(atoms, up_to: float = 1.0) -> float:
    """The smallest distance over the sum of covalent radii, over all pairs (periodic images included).

    Pairs are searched up to ``up_to`` x the largest sum of radii; ``inf`` when none is that close.
    """
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    radii = covalent_radii[atoms.numbers]
    cutoff = 2 * max(up_to, 1.0) * float(radii.max()) + 1e-6
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    if len(d) == 0:
        return float("inf")
    return float(np.min(d / (radii[i] + radii[j])))


def _calculator_class():
    require("relaxation")
    from ase.calculators.calculator import Calculator, all_changes

    class SoftSpheres(Calculator):
        """Harmonic repulsion between atoms closer than ``scale`` x (sum of covalent radii)."""

        implemented_properties = ["energy", "free_energy", "forces", "stress"]

        def __init__(self, scale: float = SCALE, stiffness: float = STIFFNESS, **kwargs):
            super().__init__(**kwargs)
            self.scale, self.stiffness = float(scale), float(stiffness)

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            from ase.data import covalent_radii
            from ase.neighborlist import neighbor_list

            super().calculate(atoms, properties, system_changes)
            atoms = self.atoms
            d0_of = self.scale * covalent_radii[atoms.numbers]
            cutoff = 2 * float(d0_of.max()) + 1e-6
            i, j, d, D = neighbor_list("ijdD", atoms, cutoff)  # every pair twice; D = r_j - r_i
            d0 = d0_of[i] + d0_of[j]
            keep = (d < d0) & (d > 1e-8)  # coincident atoms have no direction to be pushed in
            i, j, d, D, d0 = i[keep], j[keep], d[keep], D[keep], d0[keep]
            overlap = d0 - d
            energy = 0.25 * self.stiffness * float(np.sum(overlap ** 2))  # halved: each pair counted twice
            forces = np.zeros((len(atoms), 3))
            # dE/dr_i of one pair = k (d0 - d) D / d (r_i moving towards r_j costs energy)
            np.add.at(forces, i, -self.stiffness * (overlap / d)[:, None] * D)
            volume = atoms.get_volume() if atoms.cell.rank == 3 else 1.0
            # stress = (1/V) sum over pairs of dE/dd * D D^T / d, again halved for the double count
            dEdd = -self.stiffness * overlap
            stress = 0.5 * np.einsum("p,pa,pb->ab", dEdd / d, D, D) / volume
            self.results = {"energy": energy, "free_energy": energy, "forces": forces,
                            "stress": stress.flat[[0, 4, 8, 5, 2, 1]]}

    return SoftSpheres


def soft_spheres(scale: float = SCALE, stiffness: float = STIFFNESS):
    """A :class:`SoftSpheres` ASE calculator."""
    return _calculator_class()(scale=scale, stiffness=stiffness)


def push_apart(atoms, scale: float = SCALE, steps: int = 200, cell: bool = True) -> int:
    """Move ``atoms`` (in place, under their constraints) until no pair is closer than ``scale`` x radii.

    Does nothing (returns 0) when no pair is that close; otherwise returns the FIRE steps taken.
    The calculator attached to ``atoms`` is kept.
    """
    require("relaxation")
    if len(atoms) < 1 or contact_ratio(atoms, scale) >= scale:
        return 0
    from ase.optimize import FIRE

    from .cellfilter import cell_filter

    calc = atoms.calc
    atoms.calc = soft_spheres(scale)
    try:
        target = cell_filter(atoms) if cell else atoms
        opt = FIRE(target, logfile=None, maxstep=0.1)
        opt.run(fmax=1e-3, steps=steps)
        return int(opt.nsteps)
    finally:
        atoms.calc = calc
