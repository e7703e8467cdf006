"""Wrapped-normal score refinement of atomic positions.

Public entry points (imported lazily by callers; nothing heavy happens at import):

- :func:`crystalformer.refinement.api.refine_crystals` -- refine a list of ``Crystal``;
- :func:`crystalformer.refinement.io.load_refiner` / ``save_refiner`` -- model directories;
- :func:`crystalformer.refinement.train.train_refiner` -- typed training function;
- :func:`crystalformer.refinement.cli.add_parsers` -- ``train-refiner`` and ``refine`` subcommands.

Two score networks, chosen by ``NetworkConfig.kind``: ``"pairs"`` (:mod:`.network`, every atom
against every atom of the cell) and ``"sites"`` (:mod:`.radius`, one receiver per Wyckoff site,
periodic neighbours within a cutoff: exact under the space group and several times cheaper).
"""

from __future__ import annotations

__all__ = ["api", "config", "io", "losses", "network", "radius", "samplers", "sde", "symmetry", "wrapped"]
