"""crystalformer: a space-group-aware generative transformer for crystal structures.

The public API, imported lazily (``import crystalformer`` does no work, so the command line
starts fast); type checkers and IDEs read the same names from the ``TYPE_CHECKING`` block::

    import crystalformer as cf

    model = cf.load_model()                                  # the shipped default model
    samples = cf.sample(model, 100, space_groups=[225])      # generation
    best = cf.predict_structure(model, "SrTiO3", n=20)       # crystal structure prediction
    subs = cf.infill(model, "SrTiO3.cif", "Sr", allowed=["Ca", "Sr", "Ba"])
    refined = cf.refine(cf.load_refiner(), samples.crystals)
    designs = cf.design(model, [cf.load_property_model("formation_energy_per_atom")], ["formation_energy_per_atom<-1"])
    report = cf.evaluate_generation(["samples/samples.json"], "train.csv")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    # crystals and their language
    "Crystal": ("crystalformer.crystal", "Crystal"),
    "Site": ("crystalformer.crystal", "Site"),
    "CrystalError": ("crystalformer.errors", "CrystalError"),
    "CrystalTokenizer": ("crystalformer.tokenizer", "CrystalTokenizer"),
    "Grammar": ("crystalformer.grammar", "Grammar"),
    "space_group": ("crystalformer.symmetry", "space_group"),
    "atomic_number": ("crystalformer.elements", "atomic_number"),
    # data and training
    "PrepareConfig": ("crystalformer.data", "PrepareConfig"),
    "prepare": ("crystalformer.data", "prepare"),
    "load_prepared": ("crystalformer.data", "load_prepared"),
    "ModelConfig": ("crystalformer.config", "ModelConfig"),
    "TrainConfig": ("crystalformer.config", "TrainConfig"),
    "train": ("crystalformer.train", "train"),
    # models
    "CrystalFormer": ("crystalformer.model", "CrystalFormer"),
    "load_model": ("crystalformer.model", "load_model"),
    "save_model": ("crystalformer.model", "save_model"),
    "load_refiner": ("crystalformer.refinement.io", "load_refiner"),
    "load_property_model": ("crystalformer.inverse.property", "load_property_model"),
    # what users do
    "Sample": ("crystalformer.sampling.api", "Sample"),
    "SampleSet": ("crystalformer.sampling.api", "SampleSet"),
    "sample": ("crystalformer.sampling.api", "sample"),
    "predict_structure": ("crystalformer.api", "predict_structure"),
    "infill": ("crystalformer.sampling.substitution", "infill"),
    "refine": ("crystalformer.refinement.api", "refine_crystals"),
    "design": ("crystalformer.inverse.api", "design"),
    "evaluate_generation": ("crystalformer.evaluation.runner", "evaluate_generation"),
    "evaluate_csp": ("crystalformer.evaluation.runner", "evaluate_csp"),
}

__all__ = [
    "Crystal",
    "CrystalError",
    "CrystalFormer",
    "CrystalTokenizer",
    "Grammar",
    "ModelConfig",
    "PrepareConfig",
    "Sample",
    "SampleSet",
    "Site",
    "TrainConfig",
    "atomic_number",
    "design",
    "evaluate_csp",
    "evaluate_generation",
    "infill",
    "load_model",
    "load_prepared",
    "load_property_model",
    "load_refiner",
    "predict_structure",
    "prepare",
    "refine",
    "sample",
    "save_model",
    "space_group",
    "train",
    "__version__",
]

if TYPE_CHECKING:
    from .api import predict_structure
    from .config import ModelConfig, TrainConfig
    from .crystal import Crystal, Site
    from .data import PrepareConfig, load_prepared, prepare
    from .elements import atomic_number
    from .errors import CrystalError
    from .evaluation.runner import evaluate_csp, evaluate_generation
    from .grammar import Grammar
    from .inverse.api import design
    from .inverse.property import load_property_model
    from .model import CrystalFormer, load_model, save_model
    from .refinement.api import refine_crystals as refine
    from .refinement.io import load_refiner
    from .sampling.api import Sample, SampleSet, sample
    from .sampling.substitution import infill
    from .symmetry import space_group
    from .tokenizer import CrystalTokenizer
    from .train import train


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'crystalformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
