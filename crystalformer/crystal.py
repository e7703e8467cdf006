"""The canonical Wyckoff representation of a crystal: ``Crystal`` and ``Site``.

A crystal is its space group (ITA number, setting of the Wyckoff tables), one ``Site`` per
symmetry-distinct orbit (Wyckoff letter, element, the position's free parameters only) and
the conventional lattice (a, b, c in Å; alpha, beta, gamma in degrees).

Canonical form built by :meth:`Crystal.from_structure` (DESIGN section 3):

1. Symmetry from spglib (one source for space group, standardized conventional cell and
   Wyckoff letters), run with the Hall number of the tables' setting so that spglib's letters
   and the tables agree (they differ by origin choice otherwise, e.g. Fd-3m). spglib sees the
   atoms wrapped into [0, 1) and in a canonical order (atomic number, then coordinates): its
   answer for inputs at the edge of ``symprec`` depends on the atom order.
2. Orbits are found on spglib's standardized cell with the tables. Each is represented by
   the image that satisfies its Wyckoff position's first operation; when several images do
   (``(x, x, 0)`` and ``(-x, -x, 0)`` both fit ``x, x, 0``), the orbit's parameters are first
   fitted by least squares to all its atoms (averaging the residual asymmetry of slightly
   distorted inputs), then the image with the lexicographically smallest wrapped free
   parameters is kept (entries within 1e-8 count as equal, so float noise never decides).
3. Sites are ordered by Wyckoff letter (a first), then atomic number, then free parameters.
4. The lattice is spglib's idealized conventional cell; only the crystal system's free
   parameters are independent (see :mod:`crystalformer.symmetry.lattice`).

Free and lattice parameters are rounded to 10 decimals. The form is then identical (``==``)
for the input with its atoms permuted or moved by lattice vectors, and (as seen on all test
data) rotated. It is not unique under the space group's Euclidean normalizer: spglib keeps the
input's origin among the equivalent ones, so an input with another origin (or a supercell)
may come out as an equivalent description (rock salt with Cl on 4a and Na on 4b; x -> x + 1/2;
in polar groups any shift along the polar axis), always of the same structure.

``symprec`` defaults to 0.01 Å (strict, as CrystalFormer); Materials Project uses 0.1 Å,
which finds higher symmetry in slightly distorted structures.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .elements import atomic_number
from .errors import MAX_INPUT_ATOMS, CrystalError
from .symmetry import (
    LETTERS,
    expand_lattice,
    free_lattice_names,
    reduce_lattice,
    space_group,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure


# spglib's standardized positions are idealized only up to about symprec (seen: ~0.003 in
# fractional units after an arbitrary origin shift of an I4 crystal), so orbit matching uses a
# fractional tolerance of 2 * symprec / (shortest cell edge), and at least 1e-3.
_MIN_FIT_TOL = 1e-3

# Free parameters and lattice parameters are rounded to 10 decimals (1e-10 fractional, ~1e-9 Å):
# inputs that differ only by float noise (an atom moved by a lattice vector, x + 1 - 1 != x;
# the output of to_structure read back) then give bit-identical Crystals, except when a value
# falls within ~1e-16 of a rounding boundary (odds ~1e-6 per number).
_DECIMALS = 10


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
            atomic_number(site.element)
        if len(self.lattice) != 6:
            raise ValueError(f"lattice needs 6 numbers (a, b, c, alpha, beta, gamma), got {self.lattice}")
        lat = np.asarray(self.lattice, dtype=float)
        if not np.all(np.isfinite(lat)) or np.any(lat[:3] <= 0) or np.any((lat[3:] <= 0) | (lat[3:] >= 180)):
            raise ValueError(f"lattice {self.lattice} needs finite lengths > 0 Å and angles in (0, 180) degrees")
        if not all(np.isfinite(p) for site in self.sites for p in site.params):
            raise ValueError(f"free parameters must be finite numbers: {[s.params for s in self.sites]}")
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
        return dict(sorted(counts.items(), key=lambda kv: atomic_number(kv[0])))

    @property
    def formula(self) -> str:
        """Conventional-cell formula in pymatgen's order (by electronegativity), counts of 1 omitted:
        ``Na4Cl4``, ``CsCl``, ``SrTiO3``."""
        from pymatgen.core import Composition

        parts = Composition(dict(self.composition)).formula.split()  # e.g. ['Sr1', 'Ti1', 'O3']
        return "".join(p[:-1] if p.endswith("1") and not p[-2].isdigit() else p for p in parts)

    @property
    def free_lattice(self) -> tuple[float, ...]:
        """The crystal system's free lattice parameters, in token order."""
        return tuple(reduce_lattice(self.lattice, self.crystal_system).tolist())

    @property
    def wyckoff_sequence(self) -> str:
        """E.g. ``4a 4b`` for rock salt."""
        sg = space_group(self.space_group)
        return " ".join(sg.position(s.letter).label for s in self.sites)

    def isclose(self, other: Crystal, atol: float = 1e-6, lattice_rtol: float = 1e-6) -> bool:
        """Same space group, letters and elements; free parameters within ``atol`` (mod 1); lattice within rtol.

        Symmetry analysis of the same crystal given in another orientation, atom order or by
        lattice translation reproduces the Crystal to ~1e-10, not bit for bit.
        """
        if self.space_group != other.space_group or len(self.sites) != len(other.sites):
            return False
        for a, b in zip(self.sites, other.sites):
            if a.letter != b.letter or a.element != b.element:
                return False
            d = np.asarray(a.params) - np.asarray(b.params)
            if np.any(np.abs(d - np.round(d)) > atol):
                return False
        return bool(np.allclose(self.lattice, other.lattice, rtol=lattice_rtol, atol=0))

    # ------------------------------------------------------------------ structure in / out
    @classmethod
    def from_structure(cls, structure, symprec: float = 0.01, angle_tolerance: float = 5.0) -> Crystal:
        """Canonical Wyckoff representation of an ordered structure.

        ``structure``: a pymatgen ``Structure``, ASE ``Atoms``, CIF text or a path to a structure file.

        Raises :class:`CrystalError` (a ``ValueError``) naming the reason for disordered
        structures, unknown species, symmetry failures and orbits that do not fit the tables.
        """
        from .io import to_structure

        structure = to_structure(structure)
        if len(structure) == 0:
            raise CrystalError("empty", "structure has no atoms")
        if not structure.is_ordered:
            raise CrystalError("disordered", f"structure {structure.composition.formula} has partially occupied "
                                             "or mixed sites; only ordered structures are supported")
        _check_symmetry_input(structure, symprec, angle_tolerance)
        numbers = np.array([_species_number(sp) for sp in structure.species])
        cell = _canonical_cell(structure.lattice.matrix, structure.frac_coords, numbers)
        ds = _symmetry_dataset(cell, symprec, angle_tolerance)
        if ds is None:
            raise CrystalError("symmetry", f"spglib found no symmetry for {structure.composition.formula} "
                                           f"({symprec=}, {angle_tolerance=})")
        sg = space_group(ds.number)
        if ds.hall_number != sg.hall_number:
            ds = _symmetry_dataset(cell, symprec, angle_tolerance, hall_number=sg.hall_number)
            if ds is None or ds.number != sg.number:
                raise CrystalError("symmetry", f"spglib could not standardize {structure.composition.formula} "
                                               f"in the setting of space group {sg.number} ({sg.symbol})")
        lattice = _lattice_parameters(np.asarray(ds.std_lattice))
        tol = max(_MIN_FIT_TOL, 2.0 * symprec / float(min(lattice[:3])))
        sites = _sites_from_dataset(ds, sg, tol)
        letters = [x.letter for x in sites]
        for letter in set(letters):
            wp = sg.position(letter)
            if wp.dof == 0 and letters.count(letter) > 1:
                raise CrystalError("overlap", f"{structure.composition.formula}: {letters.count(letter)} orbits on the "
                                              f"fixed position {wp.label} of {sg.symbol}: atoms overlap")
        lattice = expand_lattice(_quantize(reduce_lattice(lattice, sg.crystal_system, tol=1e-2)), sg.crystal_system)
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
def _species_number(species) -> int:
    if type(species).__name__ == "DummySpecies":
        raise CrystalError("unknown_element", f"dummy species {species} cannot be represented")
    return atomic_number(getattr(species, "element", species).symbol)  # Species (with oxidation state) -> Element




def _check_symmetry_input(structure, symprec, angle_tolerance) -> None:
    """Refuse what would crash or stall spglib: non-finite numbers, degenerate cells, huge inputs.

    spglib is C code: a NaN or infinite cell length or coordinate, or a tolerance <= 0, ends the
    process with a segmentation fault instead of an exception, so these are checked first.
    """
    formula = structure.composition.formula
    for name, value in (("symprec", symprec), ("angle_tolerance", angle_tolerance)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise CrystalError("invalid", f"{name} must be a finite number > 0, got {value!r}")
    if len(structure) > MAX_INPUT_ATOMS:
        raise CrystalError("too_many_atoms", f"{formula}: {len(structure)} atoms in the input cell, more than the "
                                             f"{MAX_INPUT_ATOMS} this package analyses")
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    if not np.all(np.isfinite(matrix)):
        raise CrystalError("invalid", f"{formula}: the cell has non-finite numbers (NaN or infinity)")
    if not np.all(np.isfinite(frac)):
        raise CrystalError("invalid", f"{formula}: atomic coordinates have non-finite numbers (NaN or infinity)")
    lengths = np.linalg.norm(matrix, axis=1)
    volume = float(np.linalg.det(matrix))
    if np.any(lengths < 1e-3) or not abs(volume) > 1e-6 * float(np.prod(lengths)):
        raise CrystalError("invalid", f"{formula}: degenerate cell (lengths {np.round(lengths, 4).tolist()} Å, "
                                      f"volume {volume:.4g} Å^3)")


def _canonical_cell(matrix: np.ndarray, frac: np.ndarray, numbers: np.ndarray):
    """spglib's input with atoms wrapped into [0, 1) and in a canonical order (Z, then x, y, z).

    spglib's answer for an input at the edge of ``symprec`` depends on the atom order (seen:
    free parameters moving by 1e-4 to 2e-3, even another origin), so the input is put in an
    order that does not depend on the caller's. The order is decided on coordinates rounded to
    1e-6, so that float noise (x + 1 - 1 != x) cannot reorder atoms with equal coordinates.
    """
    wrapped = np.mod(np.asarray(frac, dtype=float), 1.0)  # (n, 3)
    wrapped[wrapped >= 1.0] = 0.0  # np.mod(-1e-17, 1.0) == 1.0
    key = np.round(wrapped, 6) % 1.0
    order = np.lexsort((key[:, 2], key[:, 1], key[:, 0], numbers))  # the last key is the primary one
    return np.asarray(matrix, dtype=float), wrapped[order], [int(z) for z in numbers[order]]


def _quantize(values, decimals: int = _DECIMALS) -> np.ndarray:
    """``values`` rounded to ``decimals`` places (see _DECIMALS)."""
    return np.round(np.asarray(values, dtype=float), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0


def _symmetry_dataset(cell, symprec: float, angle_tolerance: float, hall_number: int = 0):
    """spglib's dataset, or None where spglib finds none (it returns None up to 2.x, raises from 3.0)."""
    import spglib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib 2.5+: "returning None is deprecated"
        try:
            return spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance,
                                               hall_number=hall_number)
        except spglib.SpglibError:
            return None


def _lattice_parameters(matrix: np.ndarray) -> np.ndarray:
    lengths = np.linalg.norm(matrix, axis=1)
    a, b, c = matrix

    def angle(u, v):
        cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
        return math.degrees(math.acos(max(-1.0, min(1.0, cos))))

    return np.array([*lengths, angle(b, c), angle(a, c), angle(a, b)])


def _sites_from_dataset(ds, sg, tol: float) -> list[Site]:
    """One canonical Site per orbit of spglib's standardized conventional cell."""
    from pymatgen.core.periodic_table import Element

    std_pos = np.asarray(ds.std_positions, dtype=float)
    std_types = np.asarray(ds.std_types)
    # Wyckoff letter of each standardized atom: std atom -> primitive atom -> an input atom's letter.
    # Orbits are then found on the standardized cell itself with the tables (spglib's
    # equivalent_atoms refer to the input cell and split orbits of supercells).
    letter_of_prim = {int(p): ds.wyckoffs[i] for i, p in enumerate(ds.mapping_to_primitive)}
    letters = np.array([letter_of_prim[int(p)] for p in ds.std_mapping_to_primitive])
    sites = []
    for z in np.unique(std_types):
        element = Element.from_Z(int(z)).symbol
        for letter in np.unique(letters[std_types == z]):
            pool = std_pos[(std_types == z) & (letters == letter)]
            while len(pool):
                wp, params, members = _extract_orbit(sg, str(letter), pool, element, tol)
                params = _quantize(params) % 1.0
                sites.append(Site(wp.letter, element, tuple(float(p) for p in params)))
                pool = pool[~members]
    return canonical_order(sites)


# Two exact images of one orbit that should tie (x and x from a glide) differ by float noise
# (~1e-16); rounding both to a fixed number of decimals can still split such a tie (seen:
# 0.2209725 -> 0.220972 / 0.220973), so ties are decided with a tolerance instead.
_TIE_TOL = 1e-8


def _compare_params(a, b) -> int:
    """Lexicographic comparison of two parameter tuples; entries within _TIE_TOL count as equal."""
    for x, y in zip(a, b):
        if abs(x - y) > _TIE_TOL:
            return -1 if x < y else 1
    return 0


def canonical_order(sites) -> list[Site]:
    """Sites in the canonical order of a sentence: Wyckoff letter (a first), atomic number, free parameters."""
    return sorted(sites, key=functools.cmp_to_key(_compare_sites))


def _compare_sites(a: Site, b: Site) -> int:
    """Site order: Wyckoff letter (a first), then atomic number, then free parameters."""
    ka = (LETTERS.index(a.letter), atomic_number(a.element))
    kb = (LETTERS.index(b.letter), atomic_number(b.element))
    if ka != kb:
        return -1 if ka < kb else 1
    return _compare_params(a.params, b.params)


def _extract_orbit(sg, letter: str, pool: np.ndarray, element: str, tol: float):
    """One orbit out of ``pool`` (n, 3): its Wyckoff position, canonical free parameters, member mask (n,).

    The orbit is generated from the first pool point that satisfies the position's first
    operation and its parameters are fitted to all members (least squares); the canonical
    parameters are then the lexicographically smallest over the exact images of the fitted
    orbit that satisfy the first operation (:func:`_canonical_params`).
    """
    wp = sg.position(letter)  # spglib's letter, in the tables' setting; a mismatch is an error, never re-labelled
    for p in pool:
        u = wp.fit_first_op(p, tol)
        if u is None:
            continue
        d = wp.orbit(u)[:, None, :] - pool[None, :, :]  # (m, n, 3)
        d -= np.round(d)
        close = np.all(np.abs(d) < tol, axis=-1)  # (m, n)
        members = close.any(axis=0)
        if not close.any(axis=1).all() or members.sum() != wp.multiplicity:
            continue
        return wp, _canonical_params(wp, _least_squares_params(wp, u, pool[members])), members
    raise CrystalError("wyckoff", f"{len(pool)} {element} atoms labelled {wp.label} by spglib do not form an orbit "
                                  f"of that Wyckoff position of space group {sg.number} ({sg.symbol})")


def _canonical_params(wp, u: np.ndarray) -> np.ndarray:
    """The lexicographically smallest wrapped parameters among the orbit's images that satisfy the first operation.

    E.g. ``(x, x, 0)`` with x = 0.8 also has the image ``(-x, -x, 0)``, i.e. x = 0.2, which is kept.
    The images are exact (generated from ``u``), so equal candidates differ by float noise only.
    """
    if wp.dof == 0:
        return u
    fits = [f for f in (wp.fit_first_op(img, 1e-9) for img in wp.orbit(u)) if f is not None]
    fits = [np.where(f > 1 - _TIE_TOL, 0.0, f) for f in fits]  # 0.999999999 is 0 wrapped
    return min(fits, key=functools.cmp_to_key(_compare_params))


def _least_squares_params(wp, u: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Free parameters that best fit the whole orbit (least squares over every image), wrapped.

    spglib's standardized positions of a slightly distorted input are symmetric only to about
    symprec; fitting all m images instead of one averages that noise out, so the same crystal
    given with its atoms in another order yields the same parameters to ~1e-10.
    """
    if wp.dof == 0:
        return u
    orbit = np.einsum("mik,k->mi", wp.orbit_rotations, u) + wp.orbit_translations  # (m, 3) unwrapped
    d = orbit[:, None, :] - members[None, :, :]  # (m, m, 3)
    d -= np.round(d)
    match = np.argmin(np.abs(d).max(axis=-1), axis=1)  # image i -> member
    target = members[match] + np.round(orbit - members[match])  # (m, 3), members moved next to the images
    A = wp.orbit_rotations.reshape(-1, wp.dof)  # (3m, k)
    b = (target - wp.orbit_translations).reshape(-1)  # (3m,)
    refined = np.linalg.lstsq(A, b, rcond=None)[0]
    refined -= np.floor(refined)
    return np.where(refined > 1 - 1e-9, 0.0, refined)


def _parse_float(word: str, text: str) -> float:
    try:
        return float(word)
    except ValueError:
        raise ValueError(f"expected a number, got {word!r} in {text!r}") from None
