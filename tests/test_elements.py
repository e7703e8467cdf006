"""The built-in element table agrees with pymatgen's periodic table (the independent oracle)."""

from __future__ import annotations

import pytest

from crystalformer.elements import MAX_Z, SYMBOLS, atomic_number, find_atomic_number
from crystalformer.errors import CrystalError


def test_symbols_and_numbers_match_pymatgen():
    from pymatgen.core.periodic_table import Element

    assert MAX_Z == 103
    for z in range(1, MAX_Z + 1):
        assert SYMBOLS[z - 1] == Element.from_Z(z).symbol
        assert atomic_number(SYMBOLS[z - 1]) == z


@pytest.mark.parametrize("symbol, phrase", [("Xx", "unknown element 'Xx'"), ("na", "unknown element 'na'"),
                                            ("Og", "beyond the vocabulary"), ("", "unknown element")])
def test_unknown_or_out_of_vocabulary_elements_are_named(symbol, phrase):
    assert find_atomic_number(symbol) is None
    with pytest.raises(CrystalError, match=phrase):
        atomic_number(symbol)
