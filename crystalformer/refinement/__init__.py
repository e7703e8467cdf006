"""Wrapped-normal score refinement of atomic positions.

Public entry points (imported lazily by callers; nothing heavy happens at import):

- :func:`crystalformer.refinement.api.refine_crystals` -- refine a list of ``Crystal``;
- :func:`crystalformer.refinement.io.load_refiner` / ``save_refiner`` -- model directories;
- :func:`crystalformer.refinement.train.train_refiner` -- typed training function;
- :func:`crystalformer.refinement.cli.add_parsers` -- ``train-refiner`` and ``refine`` subcommands.
"""

from __future__ import annotations

__all__ = ["api", "config", "io", "losses", "network", "samplers", "sde", "symmetry", "wrapped"]
