"""The Wyckoff tables against independent oracles: pyxtal's orbits, spglib's operation counts,
pymatgen's parsing of the operation strings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from crystalformer.symmetry import LETTERS, load_tables, space_group


def _same_set_mod1(a: np.ndarray, b: np.ndarray, tol: float = 1e-8) -> bool:
    """Whether point sets a (m, 3) and b (n, 3) are equal modulo lattice translations."""
    d = a[:, None, :] - b[None, :, :]  # (m, n, 3)
    d -= np.round(d)
    close = np.all(np.abs(d) < tol, axis=-1)
    return bool(close.any(axis=0).all() and close.any(axis=1).all())


def _distinct_mod1(pts: np.ndarray, tol: float = 1e-8) -> int:
    d = pts[:, None, :] - pts[None, :, :]
    d -= np.round(d)
    close = np.all(np.abs(d) < tol, axis=-1)  # (m, m)
    return int(sum(1 for i in range(len(pts)) if not close[i, :i].any()))


def test_counts():
    tables = load_tables()
    assert tables["n_space_groups"] == 230
    assert sum(len(space_group(n).wyckoff) for n in range(1, 231)) == 1731


@pytest.mark.parametrize("chunk", range(10))
def test_orbits_match_pyxtal(chunk):
    """Every position of every group: our orbit of random free parameters == pyxtal's, as sets mod 1."""
    from pyxtal.symmetry import Group

    rng = np.random.default_rng(chunk)
    for number in range(1 + 23 * chunk, min(231, 1 + 23 * (chunk + 1))):
        sg = space_group(number)
        theirs = list(reversed(Group(number).Wyckoff_positions))
        assert [w.letter for w in sg.wyckoff] == [w.letter for w in theirs]
        assert [w.letter for w in sg.wyckoff] == list(LETTERS[:len(sg.wyckoff)])
        for ours, ref in zip(sg.wyckoff, theirs):
            u = rng.random(ours.dof)
            generic = np.zeros(3)
            generic[list(ours.free_axes)] = u
            ref_affine = np.stack([op.affine_matrix for op in ref.ops])  # (m, 4, 4)
            ref_orbit = np.einsum("mij,j->mi", ref_affine[:, :3, :3], generic) + ref_affine[:, :3, 3]
            orbit = ours.orbit(u)
            assert ours.multiplicity == ref.multiplicity == len(orbit)
            assert _same_set_mod1(orbit, ref_orbit), f"{number}{ours.letter}"
            assert _distinct_mod1(orbit) == ours.multiplicity, f"{number}{ours.letter}: orbit has repeated points"
            assert ours.dof == ref.get_dof()
            # free parameters -> point -> free parameters
            np.testing.assert_allclose(ours.params_from_point(ours.point(u)), u, atol=1e-12)
            fitted = ours.fit_first_op(ours.point(u) + np.array([1.0, -2.0, 3.0]))
            assert fitted is not None
            np.testing.assert_allclose(fitted, u, atol=1e-12)


def test_general_position_is_group_order():
    import spglib

    for number in range(1, 231):
        sg = space_group(number)
        ops = spglib.get_symmetry_from_database(sg.hall_number)
        assert spglib.get_spacegroup_type(sg.hall_number).number == number
        assert sg.general_position.multiplicity == sg.order == len(ops["rotations"]), number


def test_operation_strings_match_matrices():
    from pymatgen.core.operations import SymmOp

    for number in (1, 14, 62, 139, 148, 166, 194, 225, 227, 230):
        for wp in space_group(number).wyckoff:
            for text, m in zip(wp.ops, wp.matrices):
                np.testing.assert_allclose(SymmOp.from_xyz_str(text).affine_matrix[:3], m, atol=1e-12)


def test_known_positions():
    fd3m = space_group(227)
    assert fd3m.symbol == "Fd-3m" and fd3m.centering == "F" and fd3m.centering_factor == 4
    a = fd3m.position("8a")
    assert a.multiplicity == 8 and a.dof == 0 and a.site_symmetry == "-43m"
    np.testing.assert_allclose(a.point([]), [1 / 8, 1 / 8, 1 / 8])  # origin choice 2
    g = space_group(225).position("k")
    assert g.multiplicity == 96 and g.dof == 2 and g.free_axes == (0, 2)  # (x, x, z)
    assert space_group(47).wyckoff[-1].letter == "A"  # Pmmm: 27 positions
    assert space_group(166).crystal_system == "trigonal" and space_group(166).centering_factor == 3


def test_bad_input():
    for bad in (0, 231, 1.5, True, "x"):
        with pytest.raises((ValueError, TypeError)):
            space_group(bad)
    with pytest.raises(ValueError, match="no Wyckoff position"):
        space_group(225).position("z")
    with pytest.raises(ValueError, match="free parameters"):
        space_group(225).position("k").orbit([0.1])


def test_tables_load_lazily():
    code = ("import crystalformer, crystalformer.crystal, crystalformer.symmetry.tables as t;"
            "print(t.load_tables.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"
