"""Crystal <-> Structure: round trips and canonical form against pymatgen/spglib."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalformer import Crystal, CrystalError, Site
from crystalformer.io import read_csv_records, structure_from_cif
from crystalformer.symmetry import LETTERS, space_group

FIXTURES = ["mp20_sample.csv", "perov5_sample.csv", "carbon24_sample.csv", "mpts52_sample.csv"]


def _records(data_dir, names=FIXTURES):
    return [r for name in names for r in read_csv_records(data_dir / name)]


@pytest.fixture(scope="module")
def structures(data_dir):
    return [(r, structure_from_cif(r.cif)) for r in _records(data_dir)]


def test_round_trip_matches_every_fixture(structures):
    matcher = StructureMatcher()
    for record, s in structures:
        crystal = Crystal.from_structure(s)
        rebuilt = crystal.to_structure()
        assert len(rebuilt) == crystal.num_atoms
        assert matcher.fit(s, rebuilt), (record.source, record.row)


def test_space_group_preserved(structures):
    """spglib finds the same group in the rebuilt structure (Materials Project rows; Carbon-24's AIRSS
    structures sit at the tolerance's edge and are checked by the round-trip report instead)."""
    for record, s in structures:
        if "carbon24" in record.source:
            continue
        crystal = Crystal.from_structure(s)
        found = SpacegroupAnalyzer(crystal.to_structure(), symprec=0.01).get_space_group_number()
        assert found == crystal.space_group == SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number()


def test_only_free_parameters_are_stored(structures):
    for _, s in structures[:30]:
        crystal = Crystal.from_structure(s)
        sg = space_group(crystal.space_group)
        for site in crystal.sites:
            assert len(site.params) == sg.position(site.letter).dof
            assert all(0.0 <= p < 1.0 for p in site.params)


def test_site_order_is_letter_then_atomic_number(structures):
    from pymatgen.core.periodic_table import Element

    for _, s in structures:
        keys = [(LETTERS.index(x.letter), Element(x.element).Z) for x in Crystal.from_structure(s).sites]
        assert keys == sorted(keys)


def test_canonical_under_permutation_translation_rotation(structures):
    """The same crystal given with atoms permuted, shifted by lattice vectors or rotated gives the same Crystal.

    Carbon-24 is excluded: spglib's own answer for those near-symmetric AIRSS cells depends on
    the atom order (even the space group can change).
    """
    from pymatgen.transformations.standard_transformations import RotationTransformation

    rng = np.random.default_rng(0)
    for record, s in structures:
        if "carbon24" in record.source:
            continue
        ref = Crystal.from_structure(s)
        idx = rng.permutation(len(s))
        permuted = Structure(s.lattice, [s.species[i] for i in idx], s.frac_coords[idx])
        shifted = Structure(s.lattice, s.species, s.frac_coords + np.array([1.0, -2.0, 3.0]))
        rotated = RotationTransformation([1, 1, 0.3], 37).apply_transformation(s)
        for variant in (permuted, shifted, rotated):
            assert Crystal.from_structure(variant).isclose(ref, atol=1e-4), (record.source, record.row)


def test_origin_shift_and_supercell_give_the_same_structure(structures):
    """Arbitrary origin shifts and supercells may pick another description among the group's
    equivalent origins (e.g. Na on 4a or 4b in rock salt), but always the same structure."""
    rng = np.random.default_rng(1)
    matcher = StructureMatcher()
    for _, s in structures[:40]:
        ref = Crystal.from_structure(s)
        shifted = Structure(s.lattice, s.species, s.frac_coords + rng.random(3))
        sup = s.copy()
        sup.make_supercell([1, 1, 2])
        for variant in (shifted, sup):
            c = Crystal.from_structure(variant)
            assert c.space_group == ref.space_group and c.composition == ref.composition
            assert matcher.fit(c.to_structure(), s)


def test_known_answers():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    c = Crystal.from_structure(nacl)
    assert c.space_group == 225 and c.wyckoff_sequence == "4a 4b" and c.composition == {"Na": 4, "Cl": 4}
    assert c.formula == "Na4Cl4" and c.num_atoms == 8
    assert c.free_lattice == pytest.approx((5.64,))

    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    c = Crystal.from_structure(cscl)
    assert c.space_group == 221 and c.wyckoff_sequence == "1a 1b"

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])  # origin choice 1 input
    c = Crystal.from_structure(si)
    assert c.space_group == 227 and c.wyckoff_sequence == "8a" and c.num_atoms == 8
    assert c.to_text(digits=2) == "227 a Si - | 5.43"

    wurtzite = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                         [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.382]])
    c = Crystal.from_structure(wurtzite)
    assert c.space_group == 186 and c.wyckoff_sequence == "2b 2b" and c.crystal_system == "hexagonal"
    assert len(c.free_lattice) == 2


def test_text_form_round_trip(structures):
    for _, s in structures:
        c = Crystal.from_structure(s)
        assert Crystal.from_text(c.to_text()) == c
    c = Crystal.from_text("225 a Na - b Cl - | 5.69")
    assert c.sites == (Site("a", "Na"), Site("b", "Cl")) and c.lattice == (5.69, 5.69, 5.69, 90.0, 90.0, 90.0)
    assert c.to_text() == "225 a Na - b Cl - | 5.69"
    c = Crystal.from_text("225 a Fe - b Zn - c Cs - e C 0.18 e N 0.29 | 10.45")
    assert c.sites[3] == Site("e", "C", (0.18,)) and c.num_atoms == 4 + 4 + 8 + 24 + 24


@pytest.mark.parametrize("text, match", [
    ("225 a Na | 5.69", "'-'"),
    ("225 a Na - b Cl -", "'|'"),
    ("999 a Na - | 5.0", "1..230"),
    ("225 z Na - | 5.0", "no Wyckoff position"),
    ("225 a Na - | 5.0 6.0", "lattice needs 1"),
    ("225 e C x | 5.0", "expected a number"),
    ("225 a Xx - | 5.0", "unknown element"),
])
def test_text_form_errors(text, match):
    with pytest.raises(ValueError, match=match):
        Crystal.from_text(text)


def test_site_params_must_match_position():
    with pytest.raises(ValueError, match="free parameters"):
        Crystal(225, (Site("e", "C", ()),), (5.0, 5.0, 5.0, 90.0, 90.0, 90.0))
    with pytest.raises(ValueError, match="cubic"):
        Crystal(225, (Site("a", "C"),), (5.0, 6.0, 5.0, 90.0, 90.0, 90.0))
    with pytest.raises(ValueError, match="finite lengths"):
        Crystal(225, (Site("a", "C"),), (float("nan"),) * 3 + (90.0, 90.0, 90.0))
    with pytest.raises(ValueError, match="finite lengths"):
        Crystal(225, (Site("a", "C"),), (-5.0, -5.0, -5.0, 90.0, 90.0, 90.0))
    with pytest.raises(ValueError, match="finite numbers"):
        Crystal(225, (Site("e", "C", (float("inf"),)),), (5.0, 5.0, 5.0, 90.0, 90.0, 90.0))
    with pytest.raises(CrystalError) as err:
        Crystal(225, (), (5.0, 5.0, 5.0, 90.0, 90.0, 90.0))
    assert err.value.reason == "empty"


def test_bad_structures_have_reasons(data_dir):
    disordered = Structure.from_file(data_dir / "cif" / "CuAu_disordered.cif")
    with pytest.raises(CrystalError) as err:
        Crystal.from_structure(disordered)
    assert err.value.reason == "disordered"

    from pymatgen.core.periodic_table import DummySpecies

    dummy = Structure(Lattice.cubic(4.0), [DummySpecies("X")], [[0, 0, 0]])
    with pytest.raises(CrystalError) as err:
        Crystal.from_structure(dummy)
    assert err.value.reason == "unknown_element"

    with pytest.raises(CrystalError) as err:
        Crystal.from_structure((data_dir / "cif" / "broken.cif").read_text())
    assert err.value.reason == "parse"


def test_other_inputs(data_dir):
    from pymatgen.io.ase import AseAtomsAdaptor

    nacl_path = data_dir / "cif" / "NaCl.cif"
    ref = Crystal.from_structure(Structure.from_file(nacl_path))
    assert Crystal.from_structure(str(nacl_path)).isclose(ref)  # a path
    assert Crystal.from_structure(nacl_path.read_text()).isclose(ref)  # CIF text
    atoms = AseAtomsAdaptor.get_atoms(Structure.from_file(nacl_path))
    assert Crystal.from_structure(atoms).isclose(ref)  # ASE Atoms
    with pytest.raises(TypeError, match="expected"):
        Crystal.from_structure(42)


def test_overlapping_atoms_are_rejected():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0, 0, 1e-5]])
    with pytest.raises(CrystalError) as err:
        Crystal.from_structure(s)
    assert err.value.reason == "overlap" and "1a" in str(err.value)
