"""Crystal <-> Structure: round trips, canonical form, known answers, text form, bad input.

Oracles: pymatgen's StructureMatcher (default tolerances) and SpacegroupAnalyzer, spglib's
Wyckoff letters, pyxtal's Euclidean-normalizer coset representatives.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalformer import Crystal, CrystalError, Site
from crystalformer.io import read_csv_records, structure_from_cif
from crystalformer.symmetry import LETTERS, expand_lattice, free_lattice_names, space_group

FIXTURES = ["mp20_sample.csv", "perov5_sample.csv", "carbon24_sample.csv", "mpts52_sample.csv"]

# Point groups 1, 2, m, mm2, 4, 4mm, 3, 3m, 6, 6mm: the origin may slide along the polar axis.
POLAR_GROUPS = frozenset([1, *range(3, 10), *range(25, 47), *range(75, 81), *range(99, 111), *range(143, 147),
                          *range(156, 162), *range(168, 174), *range(183, 187)])


@pytest.fixture(scope="module")
def structures(data_dir):
    """(record, input Structure, its Crystal) for every fixture row."""
    out = []
    for name in FIXTURES:
        for record in read_csv_records(data_dir / name):
            s = structure_from_cif(record.cif)
            out.append((record, s, Crystal.from_structure(s)))
    return out


def _where(record) -> str:
    return f"{record.source.rsplit('/', 1)[-1]} row {record.row} ({record.material_id})"


def _labels(c: Crystal) -> list[tuple[str, str]]:
    return [(s.letter, s.element) for s in c.sites]


def _multiplicities(c: Crystal) -> list[tuple[str, int]]:
    sg = space_group(c.space_group)
    return sorted((s.element, sg.position(s.letter).multiplicity) for s in c.sites)


# ---------------------------------------------------------------------- round trips
def test_round_trip_matches_every_fixture(structures):
    matcher = StructureMatcher()
    for record, s, crystal in structures:
        rebuilt = crystal.to_structure()
        assert len(rebuilt) == crystal.num_atoms == sum(crystal.composition.values())
        assert rebuilt.composition.reduced_formula == s.composition.reduced_formula, _where(record)
        assert matcher.fit(s, rebuilt), _where(record)


def test_space_group_preserved(structures):
    """spglib (through pymatgen) finds the Crystal's group in the input and in the rebuilt structure at
    symprec 0.01; at a tolerance of float noise the rebuilt structure has exactly the Crystal's group.

    Carbon-24's near-symmetric AIRSS cells sit at the tolerance's edge, where spglib's answer
    depends on the atom order (Crystal uses a canonical order, pymatgen the file's: one of 20 rows
    is C2 for one and P1 for the other), and where the idealized structure can acquire a
    supergroup within 0.01 Å (C2 -> C2/m): for them only the rebuilt structure is checked, for a
    group at least as large.
    """
    for record, s, crystal in structures:
        rebuilt = crystal.to_structure()
        assert SpacegroupAnalyzer(rebuilt, symprec=1e-5).get_space_group_number() == crystal.space_group
        found = SpacegroupAnalyzer(rebuilt, symprec=0.01).get_space_group_number()
        if "carbon24" in record.source:
            assert space_group(found).order >= space_group(crystal.space_group).order, _where(record)
        else:
            assert SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() == crystal.space_group, _where(record)
            assert found == crystal.space_group, _where(record)


def test_from_structure_of_to_structure_is_the_identity(structures):
    """Reading back the rebuilt structure gives the identical Crystal (bit for bit), unless spglib finds
    a supergroup in the idealized structure (see test_space_group_preserved)."""
    n_identical = 0
    for record, _, crystal in structures:
        again = Crystal.from_structure(crystal.to_structure())
        if again == crystal:
            n_identical += 1
        else:
            assert "carbon24" in record.source, _where(record)
            assert space_group(again.space_group).order > space_group(crystal.space_group).order, _where(record)
    assert n_identical >= len(structures) - 1


@pytest.mark.parametrize("chunk", range(10))
def test_every_wyckoff_position_round_trips(chunk):  # groups chunk+1, chunk+11, ...: spreads the big cubic ones
    """For every position of every group: a crystal with one orbit on it (Na) plus a general orbit (Cl)
    comes back with the same group, the same letters (spglib's Wyckoff letters agree with the tables),
    the same orbits (same origin), and as the identical Crystal on a second pass."""
    rng = np.random.default_rng(chunk)
    free_cells = {"triclinic": [7.1, 7.9, 8.7, 81.0, 83.0, 77.0],  # Niggli-reduced: spglib keeps the cell
                  "monoclinic": [7.1, 7.9, 8.7, 103.0], "orthorhombic": [7.1, 7.9, 8.7],
                  "tetragonal": [7.1, 8.7], "trigonal": [7.1, 8.7], "hexagonal": [7.1, 8.7], "cubic": [7.9]}
    for number in range(1 + chunk, 231, 10):
        sg = space_group(number)
        gp = sg.general_position
        for wp in sg.wyckoff:
            free = np.array(free_cells[sg.crystal_system])
            n_lengths = sum(name in "abc" for name in free_lattice_names(sg.crystal_system))
            free[:n_lengths] *= max(1.0, ((wp.multiplicity + gp.multiplicity) * 25.0 / 7.9 ** 3) ** (1 / 3))
            lattice = tuple(expand_lattice(free, sg.crystal_system).tolist())
            for _ in range(100):  # draw until no two atoms are closer than 1 Å
                crystal = Crystal(number, (Site(wp.letter, "Na", tuple(_generic(rng, wp.dof))),
                                           Site(gp.letter, "Cl", tuple(_generic(rng, gp.dof)))), lattice)
                if _min_distance(crystal) > 1.0:
                    break
            label = f"{number}{wp.letter}"
            back = Crystal.from_structure(crystal.to_structure(), symprec=1e-3)
            assert back.space_group == number, label
            assert _labels(back) == _labels(crystal), label
            assert Crystal.from_structure(back.to_structure(), symprec=1e-3) == back, label
            for ours, theirs in zip(_orbits(crystal), _orbits(back)):
                d = ours[:, None] - theirs[None]  # (m, m, 3)
                d -= np.round(d)
                assert np.all(np.abs(d).max(-1).min(1) < 1e-6), label


def _generic(rng, k: int) -> np.ndarray:
    """k random free parameters at least 0.01 away from multiples of 1/24 (no accidental extra symmetry)."""
    while True:
        u = rng.random(k)
        if np.all(np.abs(u * 24 - np.round(u * 24)) > 0.24):
            return u


def _orbits(crystal: Crystal) -> list[np.ndarray]:
    sg = space_group(crystal.space_group)
    return [sg.position(s.letter).orbit(s.params) for s in crystal.sites]


def _min_distance(crystal: Crystal) -> float:
    """Shortest distance between two atoms, over the 27 nearest cell images. By symmetry it suffices to
    measure from one atom of each orbit."""
    orbits = _orbits(crystal)
    frac = np.concatenate(orbits)  # (n, 3)
    starts = np.cumsum([0] + [len(o) for o in orbits[:-1]])  # index of each orbit's first atom
    matrix = Lattice.from_parameters(*crystal.lattice).matrix
    images = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])  # (27, 3)
    d = frac[starts][:, None, None, :] - frac[None, :, None, :] + images[None, None]  # (s, n, 27, 3)
    dist = np.linalg.norm(d @ matrix, axis=-1)  # (s, n, 27)
    dist[np.arange(len(starts)), starts, 13] = np.inf  # an atom and itself (image 0, 0, 0)
    return float(dist.min())


# ---------------------------------------------------------------------- canonical form
def test_identical_under_permutation_lattice_translation_rotation(structures):
    """Atoms permuted, each atom moved by its own lattice vector, or the whole crystal rotated: the
    identical Crystal (==, bit for bit), for every fixture row including Carbon-24."""
    from pymatgen.transformations.standard_transformations import RotationTransformation

    rng = np.random.default_rng(0)
    for record, s, ref in structures:
        idx = rng.permutation(len(s))
        permuted = Structure(s.lattice, [s.species[i] for i in idx], s.frac_coords[idx])
        translated = Structure(s.lattice, s.species, s.frac_coords + rng.integers(-3, 4, size=(len(s), 3)))
        rotated = RotationTransformation([1, 1, 0.3], 37).apply_transformation(s)
        for name, variant in (("permuted", permuted), ("translated", translated), ("rotated", rotated)):
            assert Crystal.from_structure(variant) == ref, f"{name}: {_where(record)}"


def test_supercell_gives_the_same_structure(structures):
    """A supercell comes back in the same group with the same orbits per element and rebuilds the same
    structure; usually as the identical Crystal, but not always: spglib may pick another
    normalizer-equivalent origin, and its idealized positions move by up to ~1e-3 for a
    different input cell."""
    matcher = StructureMatcher()
    n_identical = 0
    for record, s, ref in structures:
        sup = s.copy()
        sup.make_supercell([1, 1, 2])
        c = Crystal.from_structure(sup)
        assert c.space_group == ref.space_group and _multiplicities(c) == _multiplicities(ref), _where(record)
        assert matcher.fit(c.to_structure(), s), _where(record)
        n_identical += c == ref
    assert n_identical >= 0.75 * len(structures)


def _normalizer_alternatives(crystal: Crystal) -> list[Crystal]:
    """The crystal re-read after each coset representative of its group's Euclidean normalizer (pyxtal's
    table; those that keep the lattice): all descriptions of the same structure at other origins."""
    from pymatgen.core.operations import SymmOp
    from pyxtal.symmetry import Group

    s = crystal.to_structure()
    metric = s.lattice.metric_tensor
    out = []
    for text in Group(crystal.space_group).get_alternatives()["Coset Representative"]:
        m = SymmOp.from_xyz_str(text).affine_matrix
        rot, trans = m[:3, :3], m[:3, 3]
        if np.allclose(rot.T @ metric @ rot, metric, atol=1e-6):
            out.append(Crystal.from_structure(Structure(s.lattice, s.species, s.frac_coords @ rot.T + trans)))
    return out


def test_origin_shift_gives_a_normalizer_equivalent_description(structures):
    """KNOWN AMBIGUITY (not a canonical form under origin shifts): spglib keeps the input's origin
    among the equivalent ones, so an arbitrary origin shift gives one of the descriptions related by
    the Euclidean normalizer (rock salt with Na on 4a or on 4b; x -> x + 1/2; in polar groups a
    continuous shift along the polar axis). Checked: always the same group, the same orbits per
    element and the same structure; for non-polar groups exactly one of the normalizer's
    alternatives (free parameters within spglib's idealization noise, 1e-3)."""
    rng = np.random.default_rng(1)
    matcher = StructureMatcher()
    n_identical = 0
    for record, s, ref in structures:
        if "carbon24" in record.source:
            continue  # near-symmetric AIRSS cells: spglib's group itself depends on the input cell
        c = Crystal.from_structure(Structure(s.lattice, s.species, s.frac_coords + rng.random(3)))
        n_identical += c == ref
        assert c.space_group == ref.space_group and _multiplicities(c) == _multiplicities(ref), _where(record)
        assert matcher.fit(c.to_structure(), s), _where(record)
        if ref.space_group not in POLAR_GROUPS and c != ref:
            alternatives = _normalizer_alternatives(ref)
            assert any(_labels(a) == _labels(c) and a.isclose(c, atol=1e-3, lattice_rtol=1e-4)
                       for a in alternatives), _where(record)
    assert n_identical < len(structures)  # the ambiguity is real; remove this line once it is resolved


def test_origin_shift_ambiguity_rock_salt():
    """The simplest case of the ambiguity above: rock salt shifted by (1/2, 0, 0) puts Cl on 4a."""
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    shifted = Structure(nacl.lattice, nacl.species, nacl.frac_coords + [0.5, 0.0, 0.0])
    assert Crystal.from_structure(nacl).to_text() == "225 a Na - b Cl - | 5.64"
    assert Crystal.from_structure(shifted).to_text() == "225 a Cl - b Na - | 5.64"


def test_site_order_is_letter_then_atomic_number_then_params(structures):
    from pymatgen.core.periodic_table import Element

    for record, _, crystal in structures:
        keys = [(LETTERS.index(x.letter), Element(x.element).Z, x.params) for x in crystal.sites]
        assert keys == sorted(keys), _where(record)
    # sites given out of order; (x, x, x) at 0.7 is read back as its image at 0.3
    given = Crystal.from_text("221 g Na 0.35 g O 0.7 b Cs - g O 0.1 | 6.0")
    c = Crystal.from_structure(given.to_structure())
    assert c.to_text() == "221 b Cs - g O 0.1 g O 0.3 g Na 0.35 | 6.0"


def test_only_free_parameters_are_stored(structures):
    for record, _, crystal in structures:
        sg = space_group(crystal.space_group)
        for site in crystal.sites:
            assert len(site.params) == sg.position(site.letter).dof, _where(record)
            assert all(0.0 <= p < 1.0 for p in site.params), _where(record)
        assert len(crystal.free_lattice) == len(free_lattice_names(crystal.crystal_system))


# ---------------------------------------------------------------------- known answers
def test_known_answers():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    c = Crystal.from_structure(nacl)
    assert c.space_group == 225 and c.wyckoff_sequence == "4a 4b" and c.composition == {"Na": 4, "Cl": 4}
    assert c.formula == "Na4Cl4" and c.num_atoms == 8 and c.sites == (Site("a", "Na"), Site("b", "Cl"))
    assert c.free_lattice == (5.64,) and c.to_text() == "225 a Na - b Cl - | 5.64"

    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    c = Crystal.from_structure(cscl)
    assert c.space_group == 221 and c.wyckoff_sequence == "1a 1b" and c.formula == "CsCl"

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])  # origin choice 1 input
    c = Crystal.from_structure(si)
    assert c.space_group == 227 and c.wyckoff_sequence == "8a" and c.num_atoms == 8
    assert c.to_text() == "227 a Si - | 5.43"
    assert np.allclose(sorted(c.to_structure().frac_coords.tolist())[0], [0.125, 0.125, 0.125])  # origin choice 2

    perovskite = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    assert Crystal.from_structure(perovskite).to_text() == "221 a Sr - b Ti - c O - | 3.905"

    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                       [[0, 0, 0], [0.3053, 0.3053, 0]])
    assert Crystal.from_structure(rutile).to_text() == "136 a Ti - f O 0.3053 | 4.594 2.959"

    wurtzite = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                         [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.382]])
    c = Crystal.from_structure(wurtzite)
    assert c.space_group == 186 and c.wyckoff_sequence == "2b 2b" and c.crystal_system == "hexagonal"
    assert c.free_lattice == pytest.approx((3.25, 5.21))


def test_symprec_is_an_argument():
    """A 0.02 Å distortion of rock salt: P4/mmm-like at symprec 0.01, Fm-3m at 0.1 (Materials Project)."""
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    distorted = nacl.copy()
    distorted.translate_sites([0], [0.0, 0.0, 0.02 / 5.64])
    assert Crystal.from_structure(distorted).space_group != 225
    assert Crystal.from_structure(distorted, symprec=0.1).space_group == 225


# ---------------------------------------------------------------------- text form
def test_text_form_round_trip(structures):
    for record, _, c in structures:
        text = c.to_text()
        assert Crystal.from_text(text) == c, _where(record)
        assert Crystal.from_text(text).to_text() == text
    c = Crystal.from_text("225 a Na - b Cl - | 5.69")
    assert c.sites == (Site("a", "Na"), Site("b", "Cl")) and c.lattice == (5.69, 5.69, 5.69, 90.0, 90.0, 90.0)
    assert c.to_text() == "225 a Na - b Cl - | 5.69"
    c = Crystal.from_text("225 a Fe - b Zn - c Cs - e C 0.18 e N 0.29 | 10.45")
    assert c.sites[3] == Site("e", "C", (0.18,)) and c.num_atoms == 4 + 4 + 8 + 24 + 24
    c = Crystal.from_text("14 e Cs 0.1 0.2 0.3 | 5.1 6.2 7.3 101.5")
    assert c.lattice == (5.1, 6.2, 7.3, 90.0, 101.5, 90.0)
    assert c.to_text(digits=2) == "14 e Cs 0.10 0.20 0.30 | 5.10 6.20 7.30 101.50"


@pytest.mark.parametrize("text, match", [
    ("225 a Na | 5.69", "'-'"),
    ("225 a Na - b Cl -", "'|'"),
    ("999 a Na - | 5.0", "1..230"),
    ("abc a Na - | 5.0", "1..230"),
    ("225 z Na - | 5.0", "no Wyckoff position"),
    ("225 a Na - | 5.0 6.0", "lattice needs 1"),
    ("225 e C x | 5.0", "expected a number"),
    ("225 e C | 5.0", r"expected a number, got .\|."),
    ("225 a Xx - | 5.0", "unknown element"),
    ("225 a Na - | abc", "expected a number"),
])
def test_text_form_errors(text, match):
    with pytest.raises(ValueError, match=match):
        Crystal.from_text(text)


# ---------------------------------------------------------------------- bad input
def test_site_params_must_match_position():
    cube = (5.0, 5.0, 5.0, 90.0, 90.0, 90.0)
    with pytest.raises(ValueError, match=r"Wyckoff 24e .* has 1 free parameters, got 0"):
        Crystal(225, (Site("e", "C", ()),), cube)
    with pytest.raises(ValueError, match="has 0 free parameters, got 1"):
        Crystal(225, (Site("a", "C", (0.5,)),), cube)
    with pytest.raises(ValueError, match="has 2 free parameters, got 3"):
        Crystal(225, (Site("k", "C", (0.1, 0.2, 0.3)),), cube)
    with pytest.raises(ValueError, match="cubic"):
        Crystal(225, (Site("a", "C"),), (5.0, 6.0, 5.0, 90.0, 90.0, 90.0))
    with pytest.raises(ValueError, match="finite lengths"):
        Crystal(225, (Site("a", "C"),), (float("nan"),) * 3 + (90.0, 90.0, 90.0))
    with pytest.raises(ValueError, match="finite lengths"):
        Crystal(225, (Site("a", "C"),), (-5.0, -5.0, -5.0, 90.0, 90.0, 90.0))
    with pytest.raises(ValueError, match="finite numbers"):
        Crystal(225, (Site("e", "C", (float("inf"),)),), cube)
    with pytest.raises(ValueError, match="1..230"):
        Crystal(231, (Site("a", "C"),), cube)
    with pytest.raises(CrystalError) as err:
        Crystal(225, (Site("a", "Xx"),), cube)
    assert err.value.reason == "unknown_element"
    with pytest.raises(CrystalError) as err:
        Crystal(225, (), cube)
    assert err.value.reason == "empty"


def test_bad_structures_have_reasons(data_dir):
    disordered = Structure.from_file(data_dir / "cif" / "CuAu_disordered.cif")
    with pytest.raises(CrystalError, match="disordered|partially occupied") as err:
        Crystal.from_structure(disordered)
    assert err.value.reason == "disordered"

    from pymatgen.core.periodic_table import DummySpecies, Species

    dummy = Structure(Lattice.cubic(4.0), [DummySpecies("X")], [[0, 0, 0]])
    with pytest.raises(CrystalError) as err:
        Crystal.from_structure(dummy)
    assert err.value.reason == "unknown_element"

    heavy = Structure(Lattice.cubic(4.0), ["Rf"], [[0, 0, 0]])  # Z = 104 > vocabulary
    with pytest.raises(CrystalError) as err:
        Crystal.from_structure(heavy)
    assert err.value.reason == "unknown_element"

    ionic = Structure(Lattice.cubic(4.12), [Species("Cs", 1), Species("Cl", -1)], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert Crystal.from_structure(ionic).to_text() == "221 a Cs - b Cl - | 4.12"  # oxidation states dropped

    with pytest.raises(CrystalError) as err:
        Crystal.from_structure((data_dir / "cif" / "broken.cif").read_text())
    assert err.value.reason == "parse"


def test_other_inputs(data_dir):
    from pymatgen.io.ase import AseAtomsAdaptor

    nacl_path = data_dir / "cif" / "NaCl.cif"
    ref = Crystal.from_structure(Structure.from_file(nacl_path))
    assert ref.to_text() == "225 a Na - b Cl - | 5.64"
    assert Crystal.from_structure(str(nacl_path)) == ref  # a path
    assert Crystal.from_structure(nacl_path.read_text()) == ref  # CIF text
    atoms = AseAtomsAdaptor.get_atoms(Structure.from_file(nacl_path))
    assert Crystal.from_structure(atoms) == ref  # ASE Atoms
    import ase.build

    assert Crystal.from_structure(ase.build.bulk("Cu", "fcc", a=3.6)).to_text() == "225 a Cu - | 3.6"
    with pytest.raises(TypeError, match="expected"):
        Crystal.from_structure(42)


def test_overlapping_atoms_are_rejected():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0, 0, 1e-5]])
    with pytest.raises(CrystalError) as err:
        Crystal.from_structure(s)
    assert err.value.reason == "overlap" and "1a" in str(err.value)


@pytest.mark.parametrize("make, phrase", [
    (lambda L, S, np: S(L(np.array([[np.nan, 0, 0], [0, 5, 0], [0, 0, 5]])), ["Na"], [[0, 0, 0]]), "non-finite"),
    (lambda L, S, np: S(L(np.array([[np.inf, 0, 0], [0, 5, 0], [0, 0, 5]])), ["Na"], [[0, 0, 0]]), "non-finite"),
    (lambda L, S, np: S(L.cubic(5), ["Na"], [[np.nan, 0, 0]]), "non-finite"),
    (lambda L, S, np: S(L(np.array([[5, 0, 0], [5, 0, 0], [0, 0, 5]])), ["Na"], [[0, 0, 0]]), "degenerate"),
])
def test_non_finite_or_degenerate_cells_are_refused_before_spglib(make, phrase):
    """spglib segfaults on these; they must be a CrystalError naming the problem."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from crystalformer import Crystal
    from crystalformer.errors import CrystalError

    with pytest.raises(CrystalError, match=phrase) as err:
        Crystal.from_structure(make(Lattice, Structure, np))
    assert err.value.reason == "invalid"


@pytest.mark.parametrize("symprec", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_symprec_is_refused_before_spglib(symprec):
    from pymatgen.core import Lattice, Structure

    from crystalformer import Crystal
    from crystalformer.errors import CrystalError

    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(CrystalError, match="symprec must be a finite number > 0"):
        Crystal.from_structure(nacl, symprec=symprec)
