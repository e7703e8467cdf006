"""Relax decoded samples in place of their crystals (``--relax`` on sample, csp, infill and design)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

from .parallel import relax_many
from .relax import RelaxConfig


def adopt(crystal, result, info: dict, fallback_energy: float):
    """The crystal a sample carries after relaxation ``result``; ``info`` gains the record.

    The relaxed structure re-analysed for symmetry, or ``crystal`` when the relaxation failed or
    its result cannot be represented (then ``relaxed`` is False, with the reason, and the energy
    is ``fallback_energy``, the one ``crystal`` has).
    """
    from ..crystal import Crystal
    from ..errors import CrystalError

    info.update(relax=result.summary(), relaxed=result.relaxed)
    if math.isfinite(result.energy_per_atom):
        info["energy_per_atom"] = round(result.energy_per_atom, 5)
    if not result.relaxed:
        return crystal
    try:
        return Crystal.from_structure(result.structure)
    except (CrystalError, ValueError) as err:
        info["relaxed"] = False
        info["relax"]["error"] = f"relaxed structure not representable: {err}"
        info["energy_per_atom"] = None if not math.isfinite(fallback_energy) else round(fallback_energy, 5)
        return crystal


def relax_samples(samples, potential, config: RelaxConfig | None = None,
                  progress: bool = False) -> tuple[list, Counter]:
    """Each sample with a crystal relaxed (its primitive cell); returns (samples, counts by outcome).

    A relaxed sample's crystal is the relaxed structure re-analysed for symmetry; its ``physics``
    field records the energies and the relaxation. A failed or exploded relaxation keeps the
    decoded crystal, with ``relaxed: false`` and the reason; samples without a crystal pass through.
    """
    config = config if config is not None else RelaxConfig()
    items = list(samples)
    counts: Counter = Counter()
    out = list(items)
    todo = []  # (index, primitive structure) of the samples to relax
    for i, s in enumerate(items):
        if s.crystal is None:
            counts["no crystal"] += 1
            continue
        try:
            todo.append((i, s.crystal.to_structure().get_primitive_structure()))
        except (ValueError, ArithmeticError) as err:
            counts["not built"] += 1
            out[i] = replace(s, physics={**(s.physics or {}), "relaxed": False, "relax": {"error": str(err)}})
    results = relax_many([structure for _, structure in todo], potential, config)
    if progress:
        from tqdm.auto import tqdm

        results = tqdm(results, total=len(todo), desc="relax", unit="crystal")
    for (i, _), r in zip(todo, results):
        s = items[i]
        info = {**(s.physics or {}), "potential": potential.name, "energy_per_atom": None}
        crystal = adopt(s.crystal, r, info, r.initial_energy_per_atom)
        counts["relaxed" if info["relaxed"] else (info["relax"].get("error") or "failed").split(":")[0]] += 1
        out[i] = replace(s, crystal=crystal, physics=info)
    return out, counts
