"""Coverage COV-R / COV-P (CDVAE, Xie et al. 2022, appendix; code ``compute_cov`` in its eval_utils.py).

Every crystal gets two fingerprints: a structure fingerprint, the mean over sites of matminer's
``CrystalNNFingerprint.from_preset('ops')``, and a composition fingerprint, matminer's Magpie
``ElementProperty`` normalized with CDVAE's fixed per-feature mean/std (NaN -> 0,
see :mod:`._comp_scaler`). A reference crystal is *recalled* when some generated crystal is
within ``struct_cutoff`` (Euclidean, structure fingerprints) AND within ``comp_cutoff``
(composition fingerprints) of it -- each minimum taken separately, as CDVAE does; a generated
crystal is *precise* when some reference crystal is that close. COV-R is averaged over the
reference, COV-P over ALL generated crystals, including those whose fingerprint failed.
"""

from __future__ import annotations

import functools

import numpy as np

# CDVAE's COV_Cutoffs: {'mp20': struc 0.4 / comp 10, 'carbon': 0.2 / 4, 'perovskite': 0.2 / 4}.
# MPTS-52 has no published cutoffs; its structures are Materials Project ones, so the MP-20 pair is used.
COV_CUTOFFS = {
    "mp_20": (0.4, 10.0),
    "mpts_52": (0.4, 10.0),
    "perov_5": (0.2, 4.0),
    "carbon_24": (0.2, 4.0),
}


def cutoffs_for(dataset: str) -> tuple[float, float]:
    """(struct, comp) cutoffs of a data set name (mp_20, perov_5, carbon_24, mpts_52; '-' and case ignored)."""
    key = dataset.lower().replace("-", "_").replace("mp20", "mp_20").replace("perov5", "perov_5") \
        .replace("carbon24", "carbon_24").replace("mpts52", "mpts_52")
    if key not in COV_CUTOFFS:
        raise ValueError(f"no coverage cutoffs for data set {dataset!r}; known: {sorted(COV_CUTOFFS)}")
    return COV_CUTOFFS[key]


@functools.lru_cache(maxsize=1)
def _crystalnn_fp():
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops")


@functools.lru_cache(maxsize=1)
def _magpie():
    from matminer.featurizers.composition.composite import ElementProperty

    return ElementProperty.from_preset("magpie")


def structure_fingerprint(structure) -> np.ndarray:
    """Mean CrystalNN 'ops' site fingerprint over all sites (61 numbers)."""
    import warnings

    fp = _crystalnn_fp()
    with warnings.catch_warnings():  # CrystalNN warns about missing ionic radii for every odd element
        warnings.simplefilter("ignore")
        sites = [fp.featurize(structure, i) for i in range(len(structure))]
    return np.asarray(sites, dtype=float).mean(axis=0)


def composition_fingerprint(structure) -> np.ndarray:
    """Raw (unnormalized) Magpie ElementProperty fingerprint of the composition (132 numbers, may hold NaN)."""
    import warnings

    comp = getattr(structure, "composition", structure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(_magpie().featurize(comp), dtype=float)


def normalize_composition_fps(fps) -> np.ndarray:
    """CDVAE's CompScaler: (x - mean) / std per feature, NaN replaced by 0."""
    from ._comp_scaler import MEANS, STDS

    x = np.asarray(fps, dtype=float).reshape(-1, len(MEANS))
    z = (x - np.asarray(MEANS)) / np.asarray(STDS)
    return np.where(np.isnan(z), 0.0, z)


def coverage(struct_fps, comp_fps, ref_struct_fps, ref_comp_fps, struct_cutoff: float, comp_cutoff: float,
             num_generated: int | None = None) -> dict:
    """COV-R, COV-P and the mean nearest distances (AMSD / AMCD) of generated vs reference fingerprints.

    ``struct_fps`` / ``comp_fps``: per generated crystal, None where it failed (left out of the
    distances but still counted in ``num_generated``, default ``len(struct_fps)``). Composition
    fingerprints are raw Magpie vectors; they are normalized here.
    """
    from scipy.spatial.distance import cdist

    if len(struct_fps) != len(comp_fps) or len(ref_struct_fps) != len(ref_comp_fps):
        raise ValueError("structure and composition fingerprints must be given per crystal (lengths differ)")
    num_generated = len(struct_fps) if num_generated is None else num_generated
    gen = [(s, c) for s, c in zip(struct_fps, comp_fps) if s is not None and c is not None]
    ref = [(s, c) for s, c in zip(ref_struct_fps, ref_comp_fps) if s is not None and c is not None]
    if not ref:
        raise ValueError("no reference crystal has fingerprints; coverage needs a non-empty reference")
    if not gen or num_generated == 0:
        return {"cov_recall": 0.0, "cov_precision": 0.0, "amsd_recall": None, "amsd_precision": None,
                "amcd_recall": None, "amcd_precision": None, "n_cov_samples": 0, "n_cov_reference": len(ref)}
    s_d = cdist(np.array([s for s, _ in gen]), np.array([s for s, _ in ref]))
    c_d = cdist(normalize_composition_fps([c for _, c in gen]), normalize_composition_fps([c for _, c in ref]))
    s_rec, s_prec, c_rec, c_prec = s_d.min(axis=0), s_d.min(axis=1), c_d.min(axis=0), c_d.min(axis=1)
    return {
        "cov_recall": float(np.mean((s_rec <= struct_cutoff) & (c_rec <= comp_cutoff))),
        "cov_precision": float(np.sum((s_prec <= struct_cutoff) & (c_prec <= comp_cutoff)) / num_generated),
        "amsd_recall": float(s_rec.mean()), "amsd_precision": float(s_prec.mean()),
        "amcd_recall": float(c_rec.mean()), "amcd_precision": float(c_prec.mean()),
        "n_cov_samples": len(gen), "n_cov_reference": len(ref),
        "struct_cutoff": struct_cutoff, "comp_cutoff": comp_cutoff,
    }
