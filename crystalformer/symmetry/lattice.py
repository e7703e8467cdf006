"""Crystal-system lattice rules: which of (a, b, c, alpha, beta, gamma) are free.

Conventional cells (ITA standard settings, as in the Wyckoff tables):

=============  ==========================  ====================================
system         free parameters             fixed / tied
=============  ==========================  ====================================
triclinic      a, b, c, alpha, beta, gamma  none
monoclinic     a, b, c, beta               alpha = gamma = 90 (unique axis b)
orthorhombic   a, b, c                     alpha = beta = gamma = 90
tetragonal     a, c                        b = a; angles 90
trigonal       a, c                        hexagonal axes (R groups too): b = a, gamma = 120
hexagonal      a, c                        b = a; alpha = beta = 90, gamma = 120
cubic          a                           b = c = a; angles 90
=============  ==========================  ====================================

Lengths are in Å and angles in degrees throughout.
"""

from __future__ import annotations

import numpy as np

LATTICE_NAMES = ("a", "b", "c", "alpha", "beta", "gamma")

FREE_LATTICE = {
    "triclinic": ("a", "b", "c", "alpha", "beta", "gamma"),
    "monoclinic": ("a", "b", "c", "beta"),
    "orthorhombic": ("a", "b", "c"),
    "tetragonal": ("a", "c"),
    "trigonal": ("a", "c"),
    "hexagonal": ("a", "c"),
    "cubic": ("a",),
}


def free_lattice_names(system: str) -> tuple[str, ...]:
    """Names of the free lattice parameters of a crystal system, in token order."""
    try:
        return FREE_LATTICE[system]
    except KeyError:
        raise ValueError(f"unknown crystal system {system!r}; expected one of {sorted(FREE_LATTICE)}") from None


def expand_lattice(free, system: str) -> np.ndarray:
    """All six parameters (a, b, c, alpha, beta, gamma) from the system's free ones."""
    names = free_lattice_names(system)
    vals = np.asarray(free, dtype=float).reshape(-1)
    if vals.shape[0] != len(names):
        raise ValueError(f"{system} lattice takes {len(names)} free parameters {names}, got {vals.tolist()}")
    d = dict(zip(names, vals.tolist()))
    if system == "triclinic":
        return vals.copy()
    a = d["a"]
    b = d.get("b", a)
    c = d.get("c", a)
    gamma = 120.0 if system in ("trigonal", "hexagonal") else 90.0
    return np.array([a, b, c, 90.0, d.get("beta", 90.0), gamma])


def reduce_lattice(params, system: str, tol: float = 1e-3) -> np.ndarray:
    """The free parameters of a conventional lattice; raises if the cell breaks the system's rules.

    ``tol`` is relative for lengths and absolute (degrees, scaled by 100) for angles.
    """
    p = np.asarray(params, dtype=float).reshape(-1)
    if p.shape[0] != 6:
        raise ValueError(f"expected 6 lattice parameters (a, b, c, alpha, beta, gamma), got {p.tolist()}")
    names = free_lattice_names(system)
    free = np.array([p[LATTICE_NAMES.index(n)] for n in names])
    rebuilt = expand_lattice(free, system)
    scale = np.array([p[0], p[0], p[0], 100.0, 100.0, 100.0])
    if np.any(np.abs(rebuilt - p) > tol * scale):
        raise ValueError(f"lattice {np.round(p, 4).tolist()} does not satisfy the {system} constraints")
    return free
