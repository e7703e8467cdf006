"""Space-group data: Wyckoff tables (lazy, cached) and crystal-system lattice rules."""

from __future__ import annotations

from .lattice import LATTICE_NAMES, expand_lattice, free_lattice_names, reduce_lattice
from .tables import (
    LETTERS,
    SpaceGroup,
    WyckoffPosition,
    crystal_system,
    load_tables,
    space_group,
)

__all__ = [
    "LATTICE_NAMES",
    "LETTERS",
    "SpaceGroup",
    "WyckoffPosition",
    "crystal_system",
    "expand_lattice",
    "free_lattice_names",
    "load_tables",
    "reduce_lattice",
    "space_group",
]
