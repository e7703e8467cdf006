"""The textbook structures are the ones in the books: space group, coordination, density."""

from __future__ import annotations

import pytest

pytest.importorskip("pymatgen")

from crystalformer.textbook import TEXTBOOK, textbook

# measured densities in g/cm^3 (CRC Handbook), and the coordination number of the first species
FACTS = {"NaCl": (2.165, 6), "CsCl": (3.99, 8), "Si": (2.329, 4), "GaAs": (5.32, 4), "ZnO": (5.61, 4),
         "TiO2": (4.25, 6), "SrTiO3": (5.12, 12), "CaF2": (3.18, 8), "MgAl2O4": (3.58, 4), "Cu": (8.96, 12)}


@pytest.mark.parametrize("entry", TEXTBOOK, ids=lambda t: t.formula)
def test_textbook_structure_matches_the_books(entry):
    from pymatgen.analysis.local_env import CrystalNN
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = entry.structure()
    assert s.composition.reduced_formula == entry.formula
    assert SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() == entry.number
    density, coordination = FACTS[entry.formula]
    assert s.density == pytest.approx(density, rel=0.03)
    assert CrystalNN().get_cn(s, 0) == coordination


def test_textbook_lookup_names_what_it_has():
    assert textbook("NaCl").name == "rock salt"
    with pytest.raises(KeyError, match="not a textbook entry.*NaCl"):
        textbook("Unobtainium")
