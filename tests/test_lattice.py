"""Crystal-system lattice rules: expand_lattice / reduce_lattice per system, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from crystalformer.symmetry import LATTICE_NAMES, crystal_system, expand_lattice, free_lattice_names, reduce_lattice

# system: (all six parameters, the free ones, their names)
CASES = {
    "triclinic": ([3.0, 4.0, 5.0, 80.0, 85.0, 95.0], [3.0, 4.0, 5.0, 80.0, 85.0, 95.0], LATTICE_NAMES),
    "monoclinic": ([3.0, 4.0, 5.0, 90.0, 101.0, 90.0], [3.0, 4.0, 5.0, 101.0], ("a", "b", "c", "beta")),
    "orthorhombic": ([3.0, 4.0, 5.0, 90.0, 90.0, 90.0], [3.0, 4.0, 5.0], ("a", "b", "c")),
    "tetragonal": ([3.0, 3.0, 5.0, 90.0, 90.0, 90.0], [3.0, 5.0], ("a", "c")),
    "trigonal": ([3.0, 3.0, 7.0, 90.0, 90.0, 120.0], [3.0, 7.0], ("a", "c")),  # hexagonal axes, R groups too
    "hexagonal": ([3.0, 3.0, 5.0, 90.0, 90.0, 120.0], [3.0, 5.0], ("a", "c")),
    "cubic": ([4.0, 4.0, 4.0, 90.0, 90.0, 90.0], [4.0], ("a",)),
}

# one cell per system that breaks exactly one of its rules
VIOLATIONS = {
    "monoclinic": [3.0, 4.0, 5.0, 95.0, 101.0, 90.0],  # alpha != 90 (unique axis b)
    "orthorhombic": [3.0, 4.0, 5.0, 90.0, 91.0, 90.0],
    "tetragonal": [3.0, 3.1, 5.0, 90.0, 90.0, 90.0],  # b != a
    "trigonal": [3.0, 3.0, 3.0, 80.0, 80.0, 80.0],  # rhombohedral axes are not accepted
    "hexagonal": [3.0, 3.0, 5.0, 90.0, 90.0, 90.0],  # gamma != 120
    "cubic": [4.0, 4.0, 4.1, 90.0, 90.0, 90.0],
}


@pytest.mark.parametrize("system", sorted(CASES))
def test_reduce_expand_round_trip(system):
    full, free, names = CASES[system]
    assert free_lattice_names(system) == tuple(names)
    np.testing.assert_allclose(reduce_lattice(full, system), free)
    np.testing.assert_allclose(expand_lattice(free, system), full)
    np.testing.assert_allclose(expand_lattice(reduce_lattice(full, system), system), full)


@pytest.mark.parametrize("system", sorted(VIOLATIONS))
def test_constraint_violations_name_the_system_and_cell(system):
    with pytest.raises(ValueError, match=f"{system} constraints") as err:
        reduce_lattice(VIOLATIONS[system], system)
    assert str(VIOLATIONS[system][0]) in str(err.value)  # the offending cell is quoted


def test_tolerance():
    """``tol`` is relative for lengths (of a) and 100 * tol degrees for angles."""
    np.testing.assert_allclose(reduce_lattice([4.0, 4.0, 4.002, 90, 90, 90], "cubic"), [4.0])  # 5e-4 relative
    with pytest.raises(ValueError):
        reduce_lattice([4.0, 4.0, 4.006, 90, 90, 90], "cubic")
    np.testing.assert_allclose(reduce_lattice([4.0, 4.0, 4.006, 90, 90, 90], "cubic", tol=1e-2), [4.0])
    np.testing.assert_allclose(reduce_lattice([3.0, 3.0, 5.0, 90.05, 90, 119.95], "hexagonal"), [3.0, 5.0])
    with pytest.raises(ValueError):
        reduce_lattice([3.0, 3.0, 5.0, 90, 90, 119.8], "hexagonal")


def test_every_space_group_maps_to_a_system():
    """ITA number ranges: 1-2 triclinic, 3-15 monoclinic, ..., 195-230 cubic."""
    bounds = {"triclinic": (1, 2), "monoclinic": (3, 15), "orthorhombic": (16, 74), "tetragonal": (75, 142),
              "trigonal": (143, 167), "hexagonal": (168, 194), "cubic": (195, 230)}
    for system, (lo, hi) in bounds.items():
        assert {crystal_system(n) for n in range(lo, hi + 1)} == {system}


def test_expanded_cell_has_the_expected_volume():
    """The expanded parameters build the cell pymatgen expects (hexagonal: V = sqrt(3)/2 a^2 c)."""
    from pymatgen.core import Lattice

    a, c = 3.0, 5.0
    lat = Lattice.from_parameters(*expand_lattice([a, c], "hexagonal"))
    assert lat.volume == pytest.approx(np.sqrt(3) / 2 * a * a * c)
    lat = Lattice.from_parameters(*expand_lattice([3.0, 4.0, 5.0, 101.0], "monoclinic"))
    assert lat.volume == pytest.approx(3 * 4 * 5 * np.sin(np.radians(101.0)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"cubic lattice takes 1 free parameters \('a',\)"):
        expand_lattice([3.0, 4.0], "cubic")
    with pytest.raises(ValueError, match="monoclinic lattice takes 4"):
        expand_lattice([3.0, 4.0, 5.0], "monoclinic")
    with pytest.raises(ValueError, match="expected 6 lattice parameters"):
        reduce_lattice([3.0, 4.0, 5.0], "orthorhombic")
    with pytest.raises(ValueError, match="unknown crystal system 'rhombic'"):
        free_lattice_names("rhombic")
    with pytest.raises(ValueError, match="unknown crystal system"):
        expand_lattice([3.0], "Cubic")
    with pytest.raises(ValueError, match="unknown crystal system"):
        reduce_lattice([3.0, 3.0, 3.0, 90, 90, 90], "rhombohedral")
