"""ASE's Fréchet cell filter with its answers computed once per state of the atoms."""

from __future__ import annotations

import functools


@functools.cache
def _cell_filter_class():
    """ASE's ``FrechetCellFilter`` computing its coordinates and gradient once per state of the atoms.

    ASE's optimizer loop asks a filter for its forces about three times per FIRE step (the
    convergence test, the log, the step) and for its positions about four times. The potential's
    results are cached by the calculator, but every call repeats the filter's own work on them:
    symmetrizing forces and stress (``FixSymmetry``), nine Fréchet derivatives of the matrix
    exponential for the cell gradient and a matrix logarithm for the cell coordinates. That was
    about half the time of relaxing a 12-atom cell. Answers are keyed on the exact bytes of the
    positions and cell, so the trajectory is the same, bit for bit.
    """
    from ase.filters import FrechetCellFilter

    class CachedFrechetCellFilter(FrechetCellFilter):
        _forces_key = _positions_key = None

        def _state(self, kwargs) -> tuple:
            return (self.atoms.positions.tobytes(), self.atoms.cell.array.tobytes(), tuple(sorted(kwargs.items())))

        def get_forces(self, **kwargs):
            key = self._state(kwargs)
            if key != self._forces_key:
                self._forces_key = None  # stays unset if the potential raises
                self._forces = super().get_forces(**kwargs)
                self._forces_stress, self._forces_key = self.stress, key
            self.stress = self._forces_stress  # what ASE's filter leaves behind for the convergence test
            return self._forces.copy()

        def get_positions(self):
            key = self._state({})
            if key != self._positions_key:
                self._positions, self._positions_key = super().get_positions(), key
            return self._positions.copy()

    return CachedFrechetCellFilter


def cell_filter(atoms):
    """``atoms`` under a cached ``FrechetCellFilter``: positions and cell relax together."""
    return _cell_filter_class()(atoms)
