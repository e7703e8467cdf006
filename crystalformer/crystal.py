"""The canonical Wyckoff representation of a crystal: ``Crystal`` and ``Site``.

A crystal is its space group (ITA number, setting of the Wyckoff tables), one ``Site`` per
symmetry-distinct orbit (Wyckoff letter, element, the position's free parameters only) and
the conventional lattice (a, b, c in Å; alpha, beta, gamma in degrees).

Canonical form built by :meth:`Crystal.from_structure` (DESIGN section 3):

1. Symmetry from spglib (one source for space group, standardized conventional cell and
   Wyckoff letters), run with the Hall number of the tables' setting so that spglib's letters
   and the tables agree (they differ by origin choice otherwise, e.g. Fd-3m).
2. Each orbit is represented by the image that satisfies its Wyckoff position's first
   operation; when several images do (``(x, x, 0)`` and ``(-x, -x, 0)`` both fit
   ``x, x, 0``), the one with the lexicographically smallest wrapped free parameters
   (compared after rounding to 1e-6) is kept.
3. Sites are ordered by Wyckoff letter (a first), then atomic number, then free parameters.
4. The lattice is spglib's idealized conventional cell; only the crystal system's free
   parameters are independent (see :mod:`crystalformer.symmetry.lattice`).

``symprec`` defaults to 0.01 Å (strict, as CrystalFormer); Materials Project uses 0.1 Å,
which finds higher symmetry in slightly distorted structures.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import CrystalError
from .symmetry import LETTERS, expand_lattice, free_lattice_names, reduce_lattice, space_group

if TYPE_CHECKING:
    from pymatgen.core import Structure

MAX_Z = 103  # elements H..Lr form the vocabulary

_FIT_TOL = 1e-3  # fractional tolerance when matching idealized positions to the tables


@dataclass(frozen=True)
class Site:
    """One symmetry-distinct site: Wyckoff letter, element symbol, free parameters in [0, 1)."""

    letter: str
    element: str
    params: tuple[float, ...] = ()


@dataclass(frozen=True)
class Crystal:
    """A crystal in the canonical Wyckoff representation (see module docstring)."""

    space_group: int
    sites: tuple[Site, ...]
    lattice: tuple[float, float, float, float, float, float]

    def __post_init__(self):
        sg = space_group(self.space_group)  # validates the number
        if not self.sites:
            raise CrystalError("empty", f"a crystal in space group {self.space_group} needs at least one site")
        for site in self.sites:
            wp = sg.position(site.letter)
            if len(site.params) != wp.dof:
                raise ValueError(f"site {site} in space group {self.space_group}: Wyckoff {wp.label} "
                                 f"({wp.ops[0]}) has {wp.dof} free parameters, got {len(site.params)}")
            _atomic_number(site.element)
        if len(self.lattice) != 6:
            raise ValueError(f"lattice needs 6 numbers (a, b, c, alpha, beta, gamma), got {self.lattice}")
        reduce_lattice(self.lattice, sg.crystal_system)  # raises if the cell breaks the system's rules

    # ------------------------------------------------------------------ properties
    @property
    def crystal_system(self) -> str:
        return space_group(self.space_group).crystal_system

    @property
    def num_atoms(self) -> int:
        """Atoms in the conventional cell."""
        sg = space_group(self.space_group)
        return sum(sg.position(s.letter).multiplicity for s in self.sites)

    @property
    def composition(self) -> dict[str, int]:
        """Element -> count in the conventional cell, ordered by atomic number."""
        sg = space_group(self.space_group)
        counts: dict[str, int] = {}
        for s in self.sites:
            counts[s.element] = counts.get(s.element, 0) + sg.position(s.letter).multiplicity
        return dict(sorted(counts.items(), key=lambda kv: _atomic_number(kv[0])))

    @property
    def formula(self) -> str:
        """Conventional-cell formula, elements by atomic number, e.g. ``Na4Cl4``."""
        return "".join(f"{el}{n}" for el, n in self.composition.items())

    @property
    def free_lattice(self) -> tuple[float, ...]:
        """The crystal system's free lattice parameters, in token order."""
        return tuple(reduce_lattice(self.lattice, self.crystal_system).tolist())

    @property
    def wyckoff_sequence(self) -> str:
        """E.g. ``4a 4b`` for rock salt."""
        sg = space_group(self.space_group)
        return " ".join(sg.position(s.letter).label for s in self.sites)

    # ------------------------------------------------------------------ structure in / out
    @classmethod
    def from_structure(cls, structure, symprec: float = 0.01, angle_tolerance: float = 5.0) -> Crystal:
        """Canonical Wyckoff representation of an ordered structure.

        ``structure``: a pymatgen ``Structure``, ASE ``Atoms``, CIF text or a path to a structure file.

        Raises :class:`CrystalError` (a ``ValueError``) naming the reason for disordered
        structures, unknown species, symmetry failures and orbits that do not fit the tables.
        """
        import spglib

        from .io import to_structure

        structure = to_structure(structure)
        if len(structure) == 0:
            raise CrystalError("empty", "structure has no atoms")
        if not structure.is_ordered:
            raise CrystalError("disordered", f"structure {structure.composition.formula} has partially occupied "
                                             "or mixed sites; only ordered structures are supported")
        numbers = [_species_number(sp) for sp in structure.species]
        cell = (structure.lattice.matrix, structure.frac_coords, numbers)
        ds = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
        if ds is None:
            raise CrystalError("symmetry", f"spglib found no symmetry for {structure.composition.formula} "
                                           f"({symprec=}, {angle_tolerance=})")
        sg = space_group(ds.number)
        if ds.hall_number != sg.hall_number:
            ds = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance,
                                             hall_number=sg.hall_number)
            if ds is None or ds.number != sg.number:
                raise CrystalError("symmetry", f"spglib could not standardize {structure.composition.formula} "
                                               f"in the setting of space group {sg.number} ({sg.symbol})")
        sites = _sites_from_dataset(ds, sg)
        lattice = _lattice_parameters(np.asarray(ds.std_lattice))
        lattice = expand_lattice(reduce_lattice(lattice, sg.crystal_system, tol=1e-2), sg.crystal_system)
        return cls(space_group=sg.number, sites=tuple(sites), lattice=tuple(float(v) for v in lattice))

    def to_structure(self) -> Structure:
        """Expand every orbit with the tables' operations into a pymatgen ``Structure`` (conventional cell)."""
        from pymatgen.core import Lattice, Structure

        sg = space_group(self.space_group)
        coords, species = [], []
        for site in self.sites:
            wp = sg.position(site.letter)
            coords.append(wp.orbit(site.params))  # (m, 3)
            species.extend([site.element] * wp.multiplicity)
        lattice = Lattice.from_parameters(*self.lattice)
        return Structure(lattice, species, np.concatenate(coords, axis=0))

    # ------------------------------------------------------------------ text form
    def to_text(self, digits: int | None = None) -> str:
        """Human-readable form, one token per word: ``225 a Na - b Cl - | 5.69``.

        Each site is ``letter element p1 .. pk`` (``-`` when k = 0), then ``|`` and the free
        lattice parameters. ``digits=None`` writes the shortest exact float form, so
        ``Crystal.from_text(c.to_text()) == c``.
        """
        fmt = repr if digits is None else (lambda v: f"{v:.{digits}f}")
        words = [str(self.space_group)]
        for s in self.sites:
            words += [s.letter, s.element] + ([fmt(float(p)) for p in s.params] or ["-"])
        words.append("|")
        words += [fmt(float(v)) for v in self.free_lattice]
        return " ".join(words)

    @classmethod
    def from_text(cls, text: str) -> Crystal:
        """Parse :meth:`to_text` output; errors name the offending word."""
        words = text.split()
        if "|" not in words:
            raise ValueError(f"crystal text needs '|' before the lattice parameters: {text!r}")
        bar = words.index("|")
        try:
            sg = space_group(int(words[0]))
        except (ValueError, IndexError):
            raise ValueError(f"crystal text must start with a space-group number 1..230: {text!r}") from None
        sites, i = [], 1
        while i < bar:
            if i + 1 >= bar:
                raise ValueError(f"incomplete site at word {i} of {text!r}")
            wp = sg.position(words[i])
            element = words[i + 1]
            if wp.dof == 0:
                if words[i + 2] != "-":
                    raise ValueError(f"Wyckoff {wp.label} has no free parameters; expected '-' at word {i + 2} "
                                     f"of {text!r}, got {words[i + 2]!r}")
                params: tuple[float, ...] = ()
                i += 3
            else:
                params = tuple(_parse_float(w, text) for w in words[i + 2:i + 2 + wp.dof])
                if len(params) != wp.dof or i + 2 + wp.dof > bar:
                    raise ValueError(f"Wyckoff {wp.label} needs {wp.dof} parameters at word {i + 2} of {text!r}")
                i += 2 + wp.dof
            sites.append(Site(wp.letter, element, params))
        free = [_parse_float(w, text) for w in words[bar + 1:]]
        names = free_lattice_names(sg.crystal_system)
        if len(free) != len(names):
            raise ValueError(f"{sg.crystal_system} lattice needs {len(names)} values {names} after '|' in {text!r}")
        return cls(sg.number, tuple(sites), tuple(expand_lattice(free, sg.crystal_system).tolist()))

    def __str__(self) -> str:
        return self.to_text(digits=4)


# ---------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def _atomic_number(symbol: str) -> int:
    from pymatgen.core.periodic_table import Element

    try:
        z = Element(symbol).Z
    except (ValueError, KeyError):
        raise CrystalError("unknown_element", f"unknown element {symbol!r}") from None
    if z > MAX_Z:
        raise CrystalError("unknown_element", f"element {symbol} (Z={z}) is beyond the vocabulary (Z <= {MAX_Z})")
    return z


def _species_number(species) -> int:
    if type(species).__name__ == "DummySpecies":
        raise CrystalError("unknown_element", f"dummy species {species} cannot be represented")
    return _atomic_number(getattr(species, "element", species).symbol)  # Species (with oxidation state) -> Element


def _lattice_parameters(matrix: np.ndarray) -> np.ndarray:
    lengths = np.linalg.norm(matrix, axis=1)
    a, b, c = matrix

    def angle(u, v):
        cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
        return math.degrees(math.acos(max(-1.0, min(1.0, cos))))

    return np.array([*lengths, angle(b, c), angle(a, c), angle(a, b)])


def _sites_from_dataset(ds, sg) -> list[Site]:
    """One canonical Site per orbit of spglib's standardized conventional cell."""
    from pymatgen.core.periodic_table import Element

    std_pos = np.asarray(ds.std_positions, dtype=float)
    std_types = np.asarray(ds.std_types)
    # std atom -> primitive atom -> an input atom: its Wyckoff letter and orbit id
    prim_to_input = {int(p): i for i, p in enumerate(ds.mapping_to_primitive)}
    input_idx = np.array([prim_to_input[int(p)] for p in ds.std_mapping_to_primitive])
    orbit_ids = np.asarray(ds.equivalent_atoms)[input_idx]
    sites = []
    for orbit in np.unique(orbit_ids):
        members = np.flatnonzero(orbit_ids == orbit)
        letter = ds.wyckoffs[input_idx[members[0]]]
        element = Element.from_Z(int(std_types[members[0]])).symbol
        pts = std_pos[members]
        wp, params = _fit_orbit(sg, letter, pts, element)
        sites.append(Site(wp.letter, element, tuple(float(p) for p in params)))
    sites.sort(key=lambda s: (LETTERS.index(s.letter), _atomic_number(s.element), tuple(round(p, 6) for p in s.params)))
    return sites


def _fit_orbit(sg, letter: str, pts: np.ndarray, element: str):
    """The Wyckoff position and canonical free parameters of one orbit (points (m, 3))."""
    candidates = [sg.position(letter)] + [w for w in sg.wyckoff if w.letter != letter and w.multiplicity == len(pts)]
    for wp in candidates:
        if wp.multiplicity != len(pts):
            continue
        fits = [u for u in (wp.fit_first_op(p, _FIT_TOL) for p in pts) if u is not None]
        fits = [np.where(u > 1 - 1e-6, 0.0, u) for u in fits]  # 0.9999999 -> 0
        if not fits:
            continue
        best = min(fits, key=lambda u: tuple(np.round(u, 6)))
        if _same_orbit(wp.orbit(best), pts):
            return wp, best
    raise CrystalError("wyckoff", f"orbit of {len(pts)} {element} atoms labelled {letter} by spglib does not fit "
                                  f"any Wyckoff position of space group {sg.number} ({sg.symbol})")


def _same_orbit(a: np.ndarray, b: np.ndarray, tol: float = 2e-3) -> bool:
    """Whether two point sets (m, 3) are equal modulo lattice translations."""
    d = a[:, None, :] - b[None, :, :]  # (m, m, 3)
    d -= np.round(d)
    close = np.all(np.abs(d) < tol, axis=-1)  # (m, m)
    return bool(np.all(close.any(axis=0)) and np.all(close.any(axis=1)))


def _parse_float(word: str, text: str) -> float:
    try:
        return float(word)
    except ValueError:
        raise ValueError(f"expected a number, got {word!r} in {text!r}") from None
