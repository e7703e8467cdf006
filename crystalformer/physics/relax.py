"""FIRE relaxation of atomic positions and cell under a :class:`~.potential.Potential`.

By default the space group the structure was generated in is kept (ASE ``FixSymmetry``
symmetrizes forces, stress and steps); ``symmetric=False`` lets it break. A relaxation that
raises, produces a non-finite energy or "explodes" (cell volume off by more than
``max_volume_ratio``, atoms closer than 0.5 Å) is not dropped: its result keeps the input
structure with its single-point energy, ``relaxed=False`` and the reason.

Atoms closer than ``separate`` x (sum of covalent radii) are first pushed apart by a soft-sphere
repulsion (:mod:`.separate`, same constraints), because the potential may pull them together.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from ..validity import MIN_DISTANCE
from . import require
from .cellfilter import cell_filter
from .separate import push_apart


@dataclass(frozen=True)
class RelaxConfig:
    fmax: float = 0.05  # eV/Å: converged when every force (and the scaled stress) is below
    steps: int = 300  # FIRE steps at most
    symmetric: bool = True  # keep the input's space group (FixSymmetry)
    cell: bool = True  # relax the cell too (FrechetCellFilter)
    symprec: float = 0.01  # Å, symmetry tolerance of FixSymmetry and of the space-group check
    max_volume_ratio: float = 3.0  # a relaxed volume outside [V/r, V*r] counts as an explosion
    separate: float = 0.7  # push atoms closer than this x (sum of covalent radii) apart first; 0: never

    def __post_init__(self):
        for name, value in (("fmax", self.fmax), ("symprec", self.symprec)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"RelaxConfig.{name} must be a positive number, got {value!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"RelaxConfig.steps must be an integer >= 0, got {self.steps!r}")
        if not (isinstance(self.separate, (int, float)) and 0 <= self.separate <= 1.5):
            raise ValueError(f"RelaxConfig.separate must be in [0, 1.5], got {self.separate!r}")
        if not (math.isfinite(self.max_volume_ratio) and self.max_volume_ratio > 1):
            raise ValueError(f"RelaxConfig.max_volume_ratio must be > 1, got {self.max_volume_ratio!r}")


@dataclass
class RelaxResult:
    structure: object  # pymatgen Structure: relaxed, or the input when the relaxation failed
    energy_per_atom: float  # eV/atom of ``structure`` (NaN when even the single point failed)
    initial_energy_per_atom: float
    steps: int
    converged: bool
    relaxed: bool  # False: the relaxation failed or exploded and ``structure`` is the input
    error: str | None = None
    space_group_before: int | None = None
    space_group_after: int | None = None
    wall_s: float = 0.0
    separation_steps: int = 0  # soft-sphere steps that pushed overlapping atoms apart first (0: none needed)

    def summary(self) -> dict:
        """JSON fields (no structure)."""
        out = asdict(self)
        out.pop("structure")
        for k in ("energy_per_atom", "initial_energy_per_atom"):
            out[k] = None if not math.isfinite(out[k]) else round(out[k], 5)
        out["wall_s"] = round(out["wall_s"], 3)
        return out


def _space_group(atoms, symprec: float) -> int | None:
    import spglib

    cell = (atoms.cell[:], atoms.get_scaled_positions(wrap=True), atoms.numbers)
    try:
        data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception:  # noqa: BLE001 - spglib signals failure in several ways across versions
        return None
    return None if data is None else int(data.number)


def _min_distance(atoms) -> float:
    if len(atoms) == 1:
        return float(min(atoms.cell.lengths()))
    d = atoms.get_all_distances(mic=True)
    return float(np.min(d[np.triu_indices(len(atoms), 1)]))


def relax_one(structure, potential, config: RelaxConfig = RelaxConfig()) -> RelaxResult:
    """Relax one pymatgen Structure; never raises for a bad structure (see the module text)."""
    require("relaxation")
    from ase.constraints import FixSymmetry
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    t0 = time.perf_counter()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = potential.calculator()
    n = len(atoms)
    steps = separation = 0
    sg_before = _space_group(atoms, config.symprec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e0 = float(atoms.get_potential_energy()) / n
    except Exception as err:  # noqa: BLE001
        return RelaxResult(structure, math.nan, math.nan, 0, False, False,
                           f"potential: {type(err).__name__}: {str(err)[:200]}", sg_before, sg_before,
                           time.perf_counter() - t0)

    def failed(reason: str, steps: int) -> RelaxResult:
        return RelaxResult(structure, e0 if math.isfinite(e0) else math.nan, e0, steps, False, False, reason,
                           sg_before, sg_before, time.perf_counter() - t0, separation)

    if not math.isfinite(e0):
        return failed("potential: non-finite energy", 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            push = config.separate > 0 and config.steps > 0
            if config.symmetric:
                try:
                    atoms.set_constraint(FixSymmetry(atoms, symprec=config.symprec))
                except Exception:  # noqa: BLE001 - spglib refuses atoms on top of each other:
                    if not push:  # separate them without constraint, then find the symmetry
                        raise
                    separation = push_apart(atoms, config.separate, cell=config.cell)
                    atoms.set_constraint(FixSymmetry(atoms, symprec=config.symprec))
            if push:
                separation += push_apart(atoms, config.separate, cell=config.cell)
            v0 = atoms.get_volume()  # after the push: the explosion check is about the potential's steps
            target = cell_filter(atoms) if config.cell else atoms
            opt = FIRE(target, logfile=None)
            converged = bool(opt.run(fmax=config.fmax, steps=config.steps))
            steps = int(opt.nsteps)
            e = float(atoms.get_potential_energy()) / n
    except Exception as err:  # noqa: BLE001 - kept unrelaxed, with the reason
        return failed(f"relaxation: {type(err).__name__}: {str(err)[:200]}", steps)
    if not math.isfinite(e):
        return failed("exploded: non-finite energy", steps)
    ratio = atoms.get_volume() / v0
    if not (1 / config.max_volume_ratio <= ratio <= config.max_volume_ratio):
        return failed(f"exploded: volume changed {ratio:.2f}x", steps)
    dmin = _min_distance(atoms)
    if dmin < MIN_DISTANCE:
        return failed(f"exploded: atoms {dmin:.2f} Å apart", steps)
    atoms.set_constraint()
    atoms.calc = None  # pymatgen would keep the calculator (and the potential's weights) on the Structure
    relaxed = AseAtomsAdaptor.get_structure(atoms)
    return RelaxResult(relaxed, e, e0, steps, converged, True, None, sg_before,
                       _space_group(atoms, config.symprec), time.perf_counter() - t0, separation)
