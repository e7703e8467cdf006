"""Inverse design: property models p(y | X) and posterior sampling p(X | y) ∝ p(X) p(y | X) (DESIGN section 8).

Imported lazily: ``import crystalformer.design`` does no work.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PropertyConfig": "crystalformer.design.property",
    "PropertyModel": "crystalformer.design.property",
    "load_property_model": "crystalformer.design.property",
    "train_property": "crystalformer.design.train",
    "Target": "crystalformer.design.targets",
    "parse_targets": "crystalformer.design.targets",
    "MoveConfig": "crystalformer.design.mcmc",
    "metropolis_hastings": "crystalformer.design.mcmc",
    "design": "crystalformer.design.api",
    "DesignResult": "crystalformer.design.api",
    "UnreachableTargetError": "crystalformer.design.api",
    "write_designs": "crystalformer.design.api",
    "FinetuneConfig": "crystalformer.design.finetune",
    "finetune": "crystalformer.design.finetune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crystalformer.design' has no attribute {name!r}")
