"""The Wyckoff tables against independent oracles.

- pyxtal (the tables' source, loaded through its own code path): letters, multiplicities,
  degrees of freedom and orbits of random free parameters, as point sets modulo lattice
  translations;
- spglib's operation database for the tables' Hall number (independent of pyxtal): the orbit
  of every position is the group's operations applied to its representative, the stabilizer
  of the representative has order / multiplicity operations, and the general position's
  multiplicity is the number of operations of the conventional cell, centring included;
- pymatgen: its group order for every number, and its parsing of every operation string.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from crystalformer.symmetry import LETTERS, load_tables, space_group

CHUNKS = 10  # the 230 groups are checked in chunks so that pytest-xdist can spread them


def _groups(chunk: int) -> range:
    size = -(-230 // CHUNKS)
    return range(1 + size * chunk, min(231, 1 + size * (chunk + 1)))


def _match_mod1(a: np.ndarray, b: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """(m, n) boolean: a[i] == b[j] modulo lattice translations."""
    d = a[:, None, :] - b[None, :, :]  # (m, n, 3)
    d -= np.round(d)
    return np.all(np.abs(d) < tol, axis=-1)


def _same_set_mod1(a: np.ndarray, b: np.ndarray) -> bool:
    close = _match_mod1(a, b)
    return bool(close.any(axis=0).all() and close.any(axis=1).all())


def _n_distinct_mod1(pts: np.ndarray) -> int:
    close = _match_mod1(pts, pts)
    return int(sum(1 for i in range(len(pts)) if not close[i, :i].any()))


def _spglib_ops(hall_number: int) -> tuple[np.ndarray, np.ndarray]:
    import spglib

    ops = spglib.get_symmetry_from_database(hall_number)
    return np.asarray(ops["rotations"], dtype=float), np.asarray(ops["translations"], dtype=float)


def _draw(rng: np.random.Generator, k: int) -> np.ndarray:
    """k random free parameters away from special values (multiples of 1/24) by at least 0.01."""
    while True:
        u = rng.random(k)
        if np.all(np.abs(u * 24 - np.round(u * 24)) > 0.24):
            return u


def test_counts():
    tables = load_tables()
    assert tables["n_space_groups"] == 230
    assert sum(len(space_group(n).wyckoff) for n in range(1, 231)) == 1731
    assert [space_group(n).number for n in range(1, 231)] == list(range(1, 231))


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_orbits_match_pyxtal(chunk):
    """Every position: letters, multiplicity, dof and the orbit of random free parameters agree with pyxtal."""
    from pyxtal.symmetry import Group

    rng = np.random.default_rng(chunk)
    for number in _groups(chunk):
        sg = space_group(number)
        theirs = list(reversed(Group(number).Wyckoff_positions))  # pyxtal lists the general position first
        assert [w.letter for w in sg.wyckoff] == [w.letter for w in theirs] == list(LETTERS[:len(theirs)])
        for ours, ref in zip(sg.wyckoff, theirs):
            u = _draw(rng, ours.dof)
            generic = np.zeros(3)
            generic[list(ours.free_axes)] = u  # pyxtal's ops act on the generic (x, y, z)
            ref_affine = np.stack([op.affine_matrix for op in ref.ops])  # (m, 4, 4)
            ref_orbit = np.einsum("mij,j->mi", ref_affine[:, :3, :3], generic) + ref_affine[:, :3, 3]
            orbit = ours.orbit(u)
            label = f"{number}{ours.letter}"
            assert ours.multiplicity == ref.multiplicity == len(orbit) == len(ours.ops), label
            assert ours.dof == ref.get_dof(), label
            assert _same_set_mod1(orbit, ref_orbit), label
            assert _n_distinct_mod1(orbit) == ours.multiplicity, f"{label}: orbit has repeated points"
            assert np.all((orbit >= 0) & (orbit < 1)), label


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_orbits_match_spglib_operations(chunk):
    """Every position: its orbit is spglib's operations (tables' Hall number) applied to the representative,
    and the representative's stabilizer has order / multiplicity operations (the site-symmetry order)."""
    import spglib

    rng = np.random.default_rng(100 + chunk)
    for number in _groups(chunk):
        sg = space_group(number)
        assert spglib.get_spacegroup_type(sg.hall_number).number == number
        rot, trans = _spglib_ops(sg.hall_number)  # (N, 3, 3), (N, 3)
        for wp in sg.wyckoff:
            p = wp.point(_draw(rng, wp.dof))
            images = np.einsum("nij,j->ni", rot, p) + trans  # (N, 3)
            label = f"{number}{wp.letter}"
            assert _same_set_mod1(images, wp.orbit(wp.params_from_point(p))), label
            stabilizer = _match_mod1(images, p[None, :])[:, 0].sum()
            assert stabilizer * wp.multiplicity == sg.order == len(rot), label


def test_general_position_is_group_order_spglib():
    """spglib's database lists the conventional cell's operations, centring translations included
    (Fm-3m: 48 point operations x 4 lattice points = 192)."""
    for number in range(1, 231):
        sg = space_group(number)
        rot, trans = _spglib_ops(sg.hall_number)
        assert sg.general_position.multiplicity == sg.order == len(rot), number
        n_point_ops = len({r.tobytes() for r in rot.astype(int)})
        assert len(rot) == n_point_ops * sg.centering_factor, number
    assert space_group(225).order == 192 and space_group(229).order == 96 and space_group(166).order == 36


@pytest.mark.parametrize("part", range(3))
def test_general_position_is_group_order_pymatgen(part):
    """pymatgen's SpaceGroup (conventional cell, R groups in hexagonal axes) counts the same orders."""
    from pymatgen.symmetry.groups import SpaceGroup

    for number in range(1 + part, 231, 3):
        assert SpaceGroup.from_int_number(number).order == space_group(number).order, number


def test_operation_strings_match_matrices():
    """Every operation string of every position parses (pymatgen) to the stored matrix."""
    from pymatgen.core.operations import SymmOp

    parsed: dict[str, np.ndarray] = {}
    for number in range(1, 231):
        for wp in space_group(number).wyckoff:
            assert wp.matrices.shape == (wp.multiplicity, 3, 4)
            for text in wp.ops:
                if text not in parsed:
                    parsed[text] = SymmOp.from_xyz_str(text).affine_matrix[:3]
            expected = np.stack([parsed[t] for t in wp.ops])
            np.testing.assert_allclose(wp.matrices, expected, atol=1e-12, err_msg=f"{number}{wp.letter}")


@pytest.mark.parametrize("chunk", range(0, CHUNKS, 3))
def test_free_parameters_round_trip(chunk):
    """free parameters -> point -> free parameters, also from a lattice-translated point; off-position points fail."""
    rng = np.random.default_rng(200 + chunk)
    for number in range(1, 231):
        for wp in space_group(number).wyckoff:
            u = _draw(rng, wp.dof)
            label = f"{number}{wp.letter}"
            np.testing.assert_allclose(wp.params_from_point(wp.point(u)), u, atol=1e-12, err_msg=label)
            fitted = wp.fit_first_op(wp.point(u) + np.array([1.0, -2.0, 3.0]))
            assert fitted is not None, label
            np.testing.assert_allclose(fitted, u, atol=1e-12, err_msg=label)
            np.testing.assert_allclose(wp.orbit(u)[0], wp.point(u) - np.floor(wp.point(u)), atol=1e-12)
            if wp.dof < 3:  # a generic point is on no special position
                assert wp.fit_first_op(_draw(rng, 3)) is None, label


def test_known_positions():
    fd3m = space_group(227)
    assert fd3m.symbol == "Fd-3m" and fd3m.centering == "F" and fd3m.centering_factor == 4
    a = fd3m.position("8a")
    assert a.multiplicity == 8 and a.dof == 0 and a.site_symmetry == "-43m"
    np.testing.assert_allclose(a.point([]), [1 / 8, 1 / 8, 1 / 8])  # origin choice 2
    k = space_group(225).position("k")
    assert k.multiplicity == 96 and k.dof == 2 and k.free_axes == (0, 2) and k.ops[0] == "x,x,z"
    np.testing.assert_allclose(k.point([0.1, 0.3]), [0.1, 0.1, 0.3])
    assert space_group(47).wyckoff[-1].letter == "A" and len(space_group(47).wyckoff) == 27  # Pmmm
    assert space_group(166).crystal_system == "trigonal" and space_group(166).centering_factor == 3
    assert space_group(225).position("4b").label == "4b"


def test_bad_input():
    for bad in (0, 231, -1, 1.5, True, False, "x", None):
        with pytest.raises((ValueError, TypeError)):
            space_group(bad)
    for bad in (0, 231, 1.5, True):
        with pytest.raises(ValueError, match="1..230"):
            space_group(bad)
    assert space_group(np.int64(225)).number == 225
    with pytest.raises(ValueError, match="no Wyckoff position"):
        space_group(225).position("z")
    with pytest.raises(ValueError, match="free parameters"):
        space_group(225).position("k").orbit([0.1])
    with pytest.raises(ValueError, match="free parameters"):
        space_group(225).position("a").point([0.1])


def test_tables_load_lazily():
    """Importing the package (and its modules) reads no table; the first look-up reads the JSON once."""
    code = (
        "import crystalformer, crystalformer.crystal, crystalformer.symmetry.tables as t;"
        "print(t.load_tables.cache_info().currsize, end=' ');"
        "crystalformer.space_group(225); crystalformer.space_group(1);"
        "info = t.load_tables.cache_info(); print(info.currsize, info.misses)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "1", "1"]
