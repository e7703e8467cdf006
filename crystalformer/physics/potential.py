"""Universal interatomic potentials behind one small interface.

A :class:`Potential` gives energies per atom for many structures at once (batched where the
potential allows) and an ASE calculator for forces and stress, which relaxation drives. Callers
use :func:`load_potential` by name, so another potential is one more entry in ``POTENTIALS``.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from . import require


class Potential(Protocol):
    name: str

    def energies(self, structures, batch_size: int = 32) -> tuple[np.ndarray, list[str | None]]:
        """Energy per atom (eV/atom) of each pymatgen Structure; NaN and a reason where it failed."""

    def calculator(self):
        """An ASE calculator giving energy, forces and stress."""


@dataclass
class CHGNetPotential:
    """CHGNet (Deng et al., Nat. Mach. Intell. 2023): weights ship inside the ``chgnet`` wheel, offline."""

    device: str = "cpu"
    name: str = "chgnet"
    _model: object = field(default=None, repr=False)

    @property
    def model(self):
        if self._model is None:
            require("the CHGNet potential")
            from chgnet.model import CHGNet

            with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its banner on load
                self._model = CHGNet.load(verbose=False, use_device=self.device)
        return self._model

    @property
    def version(self) -> str:
        return f"chgnet {self.model.version}"

    def energies(self, structures, batch_size: int = 32) -> tuple[np.ndarray, list[str | None]]:
        structures = list(structures)
        _ = self.model  # load (and fail loudly) before any per-structure error handling
        out = np.full(len(structures), np.nan)
        errors: list[str | None] = [None] * len(structures)
        for start in range(0, len(structures), batch_size):
            chunk = structures[start:start + batch_size]
            try:
                out[start:start + len(chunk)] = self._predict(chunk, batch_size)
            except Exception:  # noqa: BLE001 - one bad structure fails the batch: redo it one at a time to name it
                for i, s in enumerate(chunk):
                    try:
                        out[start + i] = self._predict([s], 1)[0]
                    except Exception as err:  # noqa: BLE001 - any failure is recorded with its reason
                        errors[start + i] = f"potential: {type(err).__name__}: {str(err)[:200]}"
        for i, e in enumerate(out):
            if errors[i] is None and not math.isfinite(e):
                errors[i] = "potential: non-finite energy"
                out[i] = np.nan
        return out, errors

    def _predict(self, structures, batch_size: int) -> np.ndarray:
        import warnings

        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = self.model.predict_structure(structures, task="e", batch_size=batch_size)
        if isinstance(pred, dict):
            pred = [pred]
        return np.array([float(p["e"]) for p in pred])

    def calculator(self):
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet will run on cpu"
            return CHGNetCalculator(model=self.model, use_device=self.device, on_isolated_atoms="error")


POTENTIALS = {"chgnet": CHGNetPotential}


def load_potential(name: str = "chgnet", device: str = "cpu") -> Potential:
    """A potential by name (``chgnet``); the physics extra must be installed."""
    if isinstance(name, str) is False:  # already a Potential
        return name
    try:
        cls = POTENTIALS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown potential {name!r}; known: {', '.join(POTENTIALS)}") from None
    require(f"the {name} potential")
    return cls(device=device)
