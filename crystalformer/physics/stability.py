"""Stability of generated crystals: energy above a reference hull, stable and S.U.N. rates.

A :class:`StabilityJudge` gives each structure an energy per atom (a single point under the
potential, at the structure as given: relax first with ``crystalformer relax`` to judge relaxed
structures) and its E_hull on a :class:`~.hull.ReferenceHull`. Stable means E_hull <= 0.08
eV/atom (the cut-off of the WyFormer re-evaluation of DiffCSP, MatterGen and CrystalFormer).
S.U.N.: stable, unique among the samples and novel against the training set. Rates are over
all evaluated samples; a sample whose composition the hull cannot form (an element none of the
references holds) is counted under ``no_hull`` and is not stable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .hull import STABLE_CUTOFF, ReferenceHull


@dataclass
class StabilityJudge:
    hull: ReferenceHull
    potential: object
    cutoff: float = STABLE_CUTOFF
    hull_source: str = ""

    def judge(self, structures) -> list[dict]:
        """Per structure: energy_per_atom, e_hull (None where undefined) and the reason it is None."""
        structures = list(structures)
        energies, errors = self.potential.energies(structures) if structures else (np.array([]), [])
        out = []
        for s, e, err in zip(structures, energies, errors):
            rec = {"energy_per_atom": None, "e_hull": None, "reason": err}
            if err is None and math.isfinite(e):
                rec["energy_per_atom"] = float(e)
                try:
                    eh = self.hull.e_above_hull(s.composition, float(e))
                except ValueError as hull_err:  # too many elements, or the linear program failed
                    rec["reason"] = f"no hull: {hull_err}"
                    out.append(rec)
                    continue
                if eh is None:
                    rec["reason"] = "no hull: reference lacks " + ",".join(self.hull.missing_elements(s.composition)
                                                                          or ["a phase to form it"])
                else:
                    rec["e_hull"] = eh
            out.append(rec)
        return out


def stability_metrics(records: list[dict], n_samples: int, unique: list[bool] | None, novel: list[bool] | None,
                      cutoff: float = STABLE_CUTOFF) -> dict:
    """Rates over ``n_samples`` from per-valid-sample ``records`` (and their uniqueness / novelty flags)."""
    e_hull = [r["e_hull"] for r in records]
    stable = [eh is not None and eh <= cutoff for eh in e_hull]
    defined = [eh for eh in e_hull if eh is not None]
    m = {"stable_rate": sum(stable) / n_samples if n_samples else None,
         "n_stable": int(sum(stable)), "n_energy": sum(r["energy_per_atom"] is not None for r in records),
         "n_no_hull": sum(r["energy_per_atom"] is not None and r["e_hull"] is None for r in records),
         "n_potential_failed": sum(r["energy_per_atom"] is None for r in records),
         "e_hull_median": float(np.median(defined)) if defined else None,
         "stable_cutoff": cutoff}
    if unique is not None and novel is not None:
        sun = [s and u and v for s, u, v in zip(stable, unique, novel)]
        m["sun_rate"] = sum(sun) / n_samples if n_samples else None
        m["n_sun"] = int(sum(sun))
    return m
