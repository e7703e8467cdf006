"""Universal interatomic potentials behind one small interface.

A :class:`Potential` gives energies per atom for many structures at once (batched where the
potential allows) and an ASE calculator for forces and stress, which relaxation drives. Callers
use :func:`load_potential` by name, so another potential is one more entry in ``POTENTIALS``.
"""

from __future__ import annotations

import contextlib
import functools
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
    workers: int = 1  # processes that relaxations spread over (physics.parallel); 1: this process
    name: str = "chgnet"
    _model: object = field(default=None, repr=False)
    _pool: object = field(default=None, repr=False)  # the worker processes, started on first use

    def __post_init__(self):
        if not (isinstance(self.workers, int) and self.workers >= 1):
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")

    @property
    def model(self):
        if self._model is None:
            require("the CHGNet potential")
            from chgnet.model import CHGNet

            with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its banner on load
                self._model = CHGNet.load(verbose=False, use_device=self.device)
            self._model.requires_grad_(False)  # inference only: no graph kept for the weights
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

        import torch

        # energies only: no autograd graph (about 15 % faster, same numbers)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            pred = self.model.predict_structure(structures, task="e", batch_size=batch_size)
        if isinstance(pred, dict):
            pred = [pred]
        return np.array([float(p["e"]) for p in pred])

    def calculator(self, fast: bool = True):
        """An ASE calculator; ``fast`` takes forces and stress from one backward pass.

        CHGNet's own calculator differentiates the energy twice (forces, then stress), each time
        with ``create_graph=True`` because its training needs second derivatives: about 1.7x the
        work a relaxation needs. :func:`chgnet_forces` gives the same numbers (to float32 rounding,
        tested against the stock calculator) from one first-order pass; where the installed chgnet
        lacks the internals it uses, the stock calculator is returned.
        """
        self.model.graph_converter.set_isolated_atom_response("error")
        if fast and chgnet_forces_supported(self.model):
            return chgnet_forces(self.model)
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet will run on cpu"
            return CHGNetCalculator(model=self.model, use_device=self.device, on_isolated_atoms="error")


@functools.cache
def _chgnet_forces_class():
    """The calculator class, built on first use (ASE, torch and chgnet are imported then, once)."""
    import warnings

    import torch
    from ase.calculators.calculator import Calculator, all_changes
    from ase.stress import full_3x3_to_voigt_6_stress
    from chgnet.model.model import BatchedGraph
    from pymatgen.io.ase import AseAtomsAdaptor

    class _CHGNetForces(Calculator):
        implemented_properties = ("energy", "free_energy", "forces", "stress")

        def __init__(self, model, **kwargs):
            super().__init__(**kwargs)
            self.model = model.eval()  # once: eval() walks every submodule
            self.device = next(model.parameters()).device

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            model = self.model
            structure = AseAtomsAdaptor.get_structure(self.atoms)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # chgnet builds a tensor from tensors (harmless)
                graph = model.graph_converter(structure).to(self.device)
                shift = 0 if model.composition_model is None else model.composition_model([graph])
                batch = BatchedGraph.from_graphs([graph], bond_basis_expansion=model.bond_basis_expansion,
                                                 angle_basis_expansion=model.angle_basis_expansion,
                                                 compute_stress=True)
                energy = model._compute(batch, compute_force=False, compute_stress=False)["e"] + shift
            total = (energy * len(structure) if model.is_intensive else energy).sum()
            d_pos, d_strain = torch.autograd.grad(total, [batch.atom_positions[0], batch.strains[0]])
            e = float(total)
            stress = (d_strain / batch.volumes[0]).detach().cpu().double().numpy()  # (3, 3) eV/Å^3
            self.results = {"energy": e, "free_energy": e, "forces": (-d_pos).detach().cpu().double().numpy(),
                            "stress": full_3x3_to_voigt_6_stress(stress)}  # ASE's form: no conversion warning

    return _CHGNetForces


def chgnet_forces(model):
    """ASE calculator: CHGNet energy, forces (eV/Å) and stress (eV/Å^3) from one backward pass.

    Forces are -dE/d(positions) and stress (1/V) dE/d(strain), as CHGNet defines them; built on
    CHGNet's graph assembly and forward pass (``BatchedGraph.from_graphs``, ``CHGNet._compute``).
    """
    return _chgnet_forces_class()(model)


def chgnet_forces_supported(model) -> bool:
    """Whether the installed chgnet has the internals :func:`chgnet_forces` builds on."""
    import inspect

    try:
        from chgnet.model.model import BatchedGraph
    except ImportError:
        return False
    compute = getattr(model, "_compute", None)
    if compute is None or not hasattr(BatchedGraph, "from_graphs"):
        return False
    return {"compute_force", "compute_stress"} <= set(inspect.signature(compute).parameters)


POTENTIALS = {"chgnet": CHGNetPotential}


def load_potential(name: str = "chgnet", device: str = "cpu", workers: int = 1) -> Potential:
    """A potential by name (``chgnet``); the physics extra must be installed.

    ``workers`` > 1 spreads relaxations over that many processes (:mod:`.parallel`).
    """
    if isinstance(name, str) is False:  # already a Potential
        return name
    try:
        cls = POTENTIALS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown potential {name!r}; known: {', '.join(POTENTIALS)}") from None
    require(f"the {name} potential")
    return cls(device=device, workers=workers)
