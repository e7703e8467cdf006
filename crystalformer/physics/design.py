"""Energy as a design target: ``e_hull`` and ``e_form`` scored by the potential itself.

:class:`PotentialProperty` offers what inverse design asks of a property model (``target``,
``sigma``, ``quantile``, ``metadata``, ``predict_streams``), so ``design --target e_hull<0.05``
or ``e_form=min`` aims at stability with no learned guide to exploit. Each proposal is decoded,
given a single-point energy per atom (primitive cell; results cached per crystal) and:

- ``e_hull``: its energy above the reference hull (eV/atom);
- ``e_form``: its formation energy per atom against the lowest elemental entries of the hull
  table (eV/atom).

A crystal the potential cannot score (atoms closer than 0.5 Å included), or whose composition
the hull cannot form, gets
``UNSCORED`` (5 eV/atom): far from any stability target, so chains move away from it.
``sigma`` (default 0.05 eV/atom, about CHGNet's energy error) is the width of the likelihood.
"""

from __future__ import annotations

import math

import numpy as np

from .hull import ReferenceHull, fractions
from .ranking import too_close

POTENTIAL_TARGETS = ("e_hull", "e_form")
UNSCORED = 5.0  # eV/atom for crystals the potential or the hull cannot score


class PotentialProperty:
    def __init__(self, target: str, potential, hull: ReferenceHull, tokenizer, sigma: float = 0.05):
        if target not in POTENTIAL_TARGETS:
            raise ValueError(f"{target!r} is not a potential target ({', '.join(POTENTIAL_TARGETS)})")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma}")
        self._target, self.potential, self.hull, self.tokenizer = target, potential, hull, tokenizer
        self._sigma = float(sigma)
        self._cache: dict = {}
        self.mu = {}  # lowest elemental energy per element
        for e in hull.entries:
            f = fractions(e.formula)
            if len(f) == 1:
                el = next(iter(f))
                self.mu[el] = min(self.mu.get(el, math.inf), e.energy_per_atom)
        values = np.array([self._from_energy(e.formula, e.energy_per_atom) for e in hull.entries])
        values = values[values < UNSCORED]
        grid = np.quantile(values, np.linspace(0, 1, 101)) if values.size else np.zeros(101)
        self.metadata = {"target": target, "sigma": self._sigma, "train_min": float(grid[0]),
                         "train_max": float(grid[-1]) if target == "e_form" else UNSCORED,
                         "train_quantiles": grid.tolist(), "potential": getattr(potential, "name", "?")}

    @property
    def target(self) -> str:
        return self._target

    @property
    def sigma(self) -> float:
        return self._sigma

    def quantile(self, q: float) -> float:
        grid = np.asarray(self.metadata["train_quantiles"])
        return float(np.interp(q, np.linspace(0, 1, len(grid)), grid))

    def _from_energy(self, composition, energy: float) -> float:
        if not math.isfinite(energy):
            return UNSCORED
        if self._target == "e_hull":
            try:
                eh = self.hull.e_above_hull(composition, energy)
            except ValueError:
                return UNSCORED
            return UNSCORED if eh is None else float(eh)
        x = fractions(composition)
        if any(el not in self.mu for el in x):
            return UNSCORED
        return float(energy - sum(v * self.mu[el] for el, v in x.items()))

    def predict_streams(self, streams, batch_size: int = 64) -> np.ndarray:
        out = np.full(len(streams), UNSCORED)
        todo, structures = [], []
        for i, (ids, values) in enumerate(streams):
            key = (tuple(int(t) for t in ids), tuple(round(float(v), 6) for v in values))
            if key in self._cache:
                out[i] = self._cache[key]
                continue
            try:
                s = self.tokenizer.decode(ids, values).to_structure().get_primitive_structure()
            except (ValueError, ArithmeticError):
                self._cache[key] = UNSCORED
                continue
            if too_close(s):  # the potential is untrained there; chains must not drift into collapse
                self._cache[key] = UNSCORED
                continue
            todo.append((i, key))
            structures.append(s)
        if structures:
            energies, _ = self.potential.energies(structures, batch_size)
            for (i, key), s, e in zip(todo, structures, energies):
                out[i] = self._cache[key] = self._from_energy(s.composition, float(e))
        return out
