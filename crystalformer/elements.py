"""The chemical elements the vocabulary covers (H ... Lr, Z = 1 ... 103), without pymatgen.

Training and sampling need only symbols and atomic numbers, so they run where the crystal
stack (pymatgen, spglib, pyxtal) is not installed, e.g. a bare GPU machine.
"""

from __future__ import annotations

from .errors import CrystalError

SYMBOLS = (
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe",
    "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu",
    "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn",
    "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr",
)
"""Element symbols in order of atomic number: ``SYMBOLS[z - 1]``."""

MAX_Z = len(SYMBOLS)  # 103
_Z = {symbol: z for z, symbol in enumerate(SYMBOLS, start=1)}


def find_atomic_number(symbol: str) -> int | None:
    """Z of an element symbol (case-sensitive, 'Na'), or None when it is not one of H ... Lr."""
    return _Z.get(symbol)


def atomic_number(symbol: str) -> int:
    """Z of an element of the vocabulary (H ... Lr); CrystalError("unknown_element") otherwise."""
    z = find_atomic_number(symbol) if isinstance(symbol, str) else None
    if z is None:
        if isinstance(symbol, str) and symbol in _BEYOND:
            raise CrystalError("unknown_element",
                               f"element {symbol} (Z={_BEYOND[symbol]}) is beyond the vocabulary (Z <= {MAX_Z})")
        raise CrystalError("unknown_element", f"unknown element {symbol!r}")
    return z


_BEYOND = {s: z for z, s in enumerate(("Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv",
                                       "Ts", "Og"), start=104)}

