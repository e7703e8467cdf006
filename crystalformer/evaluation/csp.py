"""Crystal structure prediction metrics: match rate and RMSE (DiffCSP, Jiao et al. NeurIPS 2023).

Each target is compared with its predictions by ``StructureMatcher(stol=0.5, angle_tol=10,
ltol=0.3)``; ``get_rms_dist`` gives the RMS displacement normalized by (V/n)^(1/3). A
prediction counts only when it AND the target pass the validity gate (structural and SMACT
validity). The match rate is over ALL targets (a target without predictions is a miss); RMSE
is the mean over matched targets. Best-of-k takes, per target, the smallest RMS among its
ranks 0..k-1. (DiffCSP's k=1 code gates both; its multi-sample code gates only the
prediction -- here both are gated for every k, so a target that fails SMACT is never matched.)
"""

from __future__ import annotations

import numpy as np

CSP_MATCHER = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}


def csp_matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**CSP_MATCHER)


def rms_distance(prediction, target, matcher=None) -> float | None:
    """Normalized RMS displacement of a matching pair, None when they do not match."""
    matcher = matcher or csp_matcher()
    result = matcher.get_rms_dist(prediction, target)
    return None if result is None else float(result[0])


def match_rate_and_rmse(rms_per_target, ks=(1,)) -> dict:
    """Summaries from ``rms_per_target``: per target, a list by rank of RMS (None = no valid match).

    Returns ``{k: {"match_rate", "rmse", "n_matched", "n_targets"}}`` for each k.
    """
    out = {}
    n = len(rms_per_target)
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        best = []
        for ranks in rms_per_target:
            found = [r for r in ranks[:k] if r is not None]
            best.append(min(found) if found else None)
        matched = [b for b in best if b is not None]
        out[k] = {"match_rate": len(matched) / n if n else None,
                  "rmse": float(np.mean(matched)) if matched else None,
                  "n_matched": len(matched), "n_targets": n}
    return out
