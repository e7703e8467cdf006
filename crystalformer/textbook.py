"""Textbook crystals: ten compounds whose ground-state structures every chemist knows.

Each entry builds its known structure from its space group, experimental lattice constants and
Wyckoff positions (room-temperature values from standard tables, e.g. Wyckoff's *Crystal
Structures*), so CSP can be checked against answers that do not come from our data:
``scripts/bench_textbook.py`` asks the model for each formula and reports the rank of the
known structure (CDVAE/DiffCSP StructureMatcher tolerances).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Textbook:
    formula: str  # reduced formula, as a user types it
    name: str  # structure type
    space_group: str  # Hermann-Mauguin symbol as pymatgen reads it
    number: int  # International Tables number of the known structure
    lattice: tuple  # (a,) cubic, (a, c) tetragonal, hexagonal or trigonal (hexagonal axes)
    species: tuple
    coords: tuple  # fractional coordinates of one atom per Wyckoff site

    def structure(self):
        """The known structure (conventional cell) as a pymatgen Structure."""
        from pymatgen.core import Lattice, Structure
        from pymatgen.symmetry.groups import SpaceGroup

        system = SpaceGroup.from_int_number(self.number).crystal_system
        make = {"cubic": Lattice.cubic, "tetragonal": Lattice.tetragonal, "hexagonal": Lattice.hexagonal,
                "trigonal": Lattice.hexagonal}[system]
        lattice = make(*self.lattice)
        return Structure.from_spacegroup(self.space_group, lattice, list(self.species), [list(c) for c in self.coords])


# Fd-3m entries use pymatgen's setting of 227: origin choice 1 (8a at 0,0,0).
TEXTBOOK: tuple[Textbook, ...] = (
    Textbook("NaCl", "rock salt", "Fm-3m", 225, (5.640,), ("Na", "Cl"), ((0, 0, 0), (0.5, 0.5, 0.5))),
    Textbook("CsCl", "caesium chloride", "Pm-3m", 221, (4.123,), ("Cs", "Cl"), ((0, 0, 0), (0.5, 0.5, 0.5))),
    Textbook("Si", "diamond", "Fd-3m", 227, (5.431,), ("Si",), ((0, 0, 0),)),
    Textbook("GaAs", "zincblende", "F-43m", 216, (5.653,), ("Ga", "As"), ((0, 0, 0), (0.25, 0.25, 0.25))),
    Textbook("ZnO", "wurtzite", "P6_3mc", 186, (3.250, 5.207), ("Zn", "O"),
             ((1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.382))),
    Textbook("TiO2", "rutile", "P4_2/mnm", 136, (4.594, 2.959), ("Ti", "O"), ((0, 0, 0), (0.305, 0.305, 0))),
    Textbook("SrTiO3", "perovskite", "Pm-3m", 221, (3.905,), ("Sr", "Ti", "O"),
             ((0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0))),
    Textbook("CaF2", "fluorite", "Fm-3m", 225, (5.463,), ("Ca", "F"), ((0, 0, 0), (0.25, 0.25, 0.25))),
    Textbook("MgAl2O4", "spinel", "Fd-3m", 227, (8.083,), ("Mg", "Al", "O"),
             ((0, 0, 0), (0.625, 0.625, 0.625), (0.3874, 0.3874, 0.3874))),
    Textbook("Cu", "fcc", "Fm-3m", 225, (3.615,), ("Cu",), ((0, 0, 0),)),
)


def textbook(formula: str) -> Textbook:
    """The entry for ``formula`` (as written in :data:`TEXTBOOK`)."""
    for t in TEXTBOOK:
        if t.formula == formula:
            return t
    raise KeyError(f"{formula}: not a textbook entry (have {', '.join(t.formula for t in TEXTBOOK)})")
