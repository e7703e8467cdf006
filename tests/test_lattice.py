from __future__ import annotations

import numpy as np
import pytest

from crystalformer.symmetry import expand_lattice, free_lattice_names, reduce_lattice

CASES = {
    "triclinic": ([3.0, 4.0, 5.0, 80.0, 85.0, 95.0], [3.0, 4.0, 5.0, 80.0, 85.0, 95.0]),
    "monoclinic": ([3.0, 4.0, 5.0, 90.0, 101.0, 90.0], [3.0, 4.0, 5.0, 101.0]),
    "orthorhombic": ([3.0, 4.0, 5.0, 90.0, 90.0, 90.0], [3.0, 4.0, 5.0]),
    "tetragonal": ([3.0, 3.0, 5.0, 90.0, 90.0, 90.0], [3.0, 5.0]),
    "trigonal": ([3.0, 3.0, 7.0, 90.0, 90.0, 120.0], [3.0, 7.0]),
    "hexagonal": ([3.0, 3.0, 5.0, 90.0, 90.0, 120.0], [3.0, 5.0]),
    "cubic": ([4.0, 4.0, 4.0, 90.0, 90.0, 90.0], [4.0]),
}


@pytest.mark.parametrize("system", sorted(CASES))
def test_reduce_expand_round_trip(system):
    full, free = CASES[system]
    assert len(free_lattice_names(system)) == len(free)
    np.testing.assert_allclose(reduce_lattice(full, system), free)
    np.testing.assert_allclose(expand_lattice(free, system), full)


def test_constraint_violations_are_named():
    with pytest.raises(ValueError, match="cubic"):
        reduce_lattice([4.0, 4.1, 4.0, 90, 90, 90], "cubic")
    with pytest.raises(ValueError, match="hexagonal"):
        reduce_lattice([3.0, 3.0, 5.0, 90, 90, 90], "hexagonal")
    with pytest.raises(ValueError, match="free parameters"):
        expand_lattice([3.0, 4.0], "cubic")
    with pytest.raises(ValueError, match="unknown crystal system"):
        free_lattice_names("rhombic")
