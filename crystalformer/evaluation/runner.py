"""The two evaluations as functions: :func:`evaluate_generation` and :func:`evaluate_csp`.

Both take entries (or paths, read with :func:`.loading.load_entries`) and return a JSON-ready
dict: ``metrics`` (the numbers), ``counts`` and ``failures`` (per-structure failures by step,
with examples), ``settings`` and ``plot_data`` (the per-structure values the report draws).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analysis import Options, analyze_all
from .loading import group_predictions, load_entries, subsample

KNOWN_DATASETS = ("mp_20", "mpts_52", "perov_5", "carbon_24")


def guess_dataset(path) -> str | None:
    """A known data-set name among the parts of ``path`` (data/perov_5/train.csv -> perov_5)."""
    parts = [p.lower().replace("-", "_") for p in Path(path).parts]
    for name in KNOWN_DATASETS:
        if any(name in p or name.replace("_", "") in p for p in parts):
            return name
    return None


def _entries(x):
    return load_entries(x) if isinstance(x, (str, Path)) else list(x)


@dataclass
class AnalyzedReference:
    """A reference set analysed once (fingerprints, space groups, reduced cells) for several evaluations.

    ``cache_path``: the cache file the analysis was read from or written to (None without a cache);
    ``from_cache``: True when it was read.
    """

    results: list[dict]
    fingerprints: bool
    reduced: bool
    source: str = ""
    cache_path: str | None = None
    from_cache: bool = False


def analyze_reference(reference, max_reference: int | None = None, seed: int = 0, coverage: bool = True,
                      novelty: bool = True, symprec: float = 0.1, workers: int = 1,
                      progress: bool = True, cache: bool | str | os.PathLike = True) -> AnalyzedReference:
    """Analyse ``reference`` as :func:`evaluate_generation` would, to pass it to several calls.

    ``cache``: True keeps the analysis in the default cache folder (:mod:`.cache`: keyed by the
    reference's content and the settings), a path keeps it there, False computes it every time.
    The results hold no ``structure`` (the reference's own Structures are not needed).
    """
    from .cache import (
        cache_dir_of,
        cache_file,
        entries_sha256,
        is_samples_json,
        load_results,
        path_sha256,
        reference_key,
        save_results,
    )

    source = str(reference) if isinstance(reference, (str, Path)) else ""
    folder, entries, path = cache_dir_of(cache), None, None
    if folder is not None:
        if isinstance(reference, (str, Path)) and not is_samples_json(Path(reference)):
            digest = path_sha256(reference)  # before loading: a hit reads no CIF
        else:
            entries = _entries(reference)
            digest = entries_sha256(entries)
        key = reference_key(digest, coverage, novelty, symprec, max_reference, seed)
        path = cache_file(folder, key)
        cached = load_results(path, key)
        if cached is not None:
            if progress:
                print(f"{_what(source, coverage, novelty, len(cached))} read from the cache {path}", file=sys.stderr)
            return AnalyzedReference(cached, coverage, novelty, source, str(path), True)
        stale = path.exists()
    entries = subsample(_entries(reference) if entries is None else entries, max_reference, seed + 1)
    if not entries:
        raise ValueError(f"no reference structures in {reference}")
    opt = Options(fingerprints=coverage, symprec=symprec, reduce=novelty, keep_structure=False)
    results = analyze_all(entries, opt, workers, progress, "reference")
    if path is not None:
        try:
            save_results(path, key, results)
            note = f"computed and cached in {path}" + (" (replacing an unreadable cache file)" if stale else "")
        except (OSError, ValueError, TypeError) as err:  # a read-only or full disk must not lose the results
            note, path = f"computed, not cached ({path}: {getattr(err, 'strerror', None) or err})", None
        if progress:
            print(f"{_what(source, coverage, novelty, len(results))} {note}", file=sys.stderr)
    return AnalyzedReference(results, coverage, novelty, source, None if path is None else str(path))


def _what(source: str, coverage: bool, novelty: bool, n: int) -> str:
    """'reference X: fingerprints, space groups and reduced cells of N structures' for the cache line."""
    parts = ["fingerprints"] * coverage + ["space groups"] + ["reduced cells"] * novelty
    kinds = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return f"reference {source or '(entries)'}: {kinds} of {n} structures"


def _failures(results: list[dict], examples: int = 20) -> dict:
    counts, ex = Counter(), []
    for r in results:
        for step, msg in r["failures"].items():
            counts[step] += 1
            if len(ex) < examples:
                ex.append({"name": r["name"], "step": step, "message": msg})
    return {"by_step": dict(counts), "examples": ex}


def evaluate_generation(samples, reference, dataset: str | None = None, cutoffs: tuple[float, float] | None = None,
                        n_wdist: int = 1000, max_reference: int | None = None, max_samples: int | None = None,
                        seed: int = 0, workers: int = 1, coverage: bool = True, novelty: bool = True,
                        symprec: float = 0.1, progress: bool = True, novelty_reference=None,
                        stability=None, cache: bool | str | os.PathLike = True) -> dict:
    """Generation metrics of ``samples`` against ``reference`` (paths or lists of Entry).

    ``reference`` (and ``novelty_reference``) may also be an :class:`AnalyzedReference`, analysed
    once for several calls. ``novelty_reference``: the set novelty is judged against (usually the
    training split) when it differs from ``reference`` (usually the test or validation split).

    ``dataset`` picks the coverage cutoffs (guessed from the reference path when None; MP-20's
    otherwise); ``cutoffs`` = (struct, comp) overrides it. ``max_reference`` / ``max_samples``
    subsample with ``seed`` (report it: the published numbers use the full sets).

    ``stability``: a :class:`crystalformer.physics.stability.StabilityJudge`; adds the energy above
    its hull of every valid sample, the stable rate and (with novelty) the S.U.N. rate.

    ``cache``: where reference analyses are kept between runs (see :func:`analyze_reference`);
    False recomputes them.
    """
    from .coverage import COV_CUTOFFS, cutoffs_for
    from .coverage import coverage as cov_fn
    from .distributions import property_wdist
    from .symmetry_stats import space_group_stats

    t0 = time.perf_counter()
    if dataset is None and isinstance(reference, (str, Path)):
        dataset = guess_dataset(reference)
    if cutoffs is None:
        cutoffs = cutoffs_for(dataset) if dataset else COV_CUTOFFS["mp_20"]
    s_entries = subsample(_entries(samples), max_samples, seed)
    if not s_entries:
        raise ValueError(f"no samples in {samples}")
    opt = Options(fingerprints=coverage, symprec=symprec, reduce=novelty)
    res = analyze_all(s_entries, opt, workers, progress, "samples")
    novelty_ref = None
    if novelty and novelty_reference is not None:
        if not isinstance(novelty_reference, AnalyzedReference):
            novelty_reference = analyze_reference(novelty_reference, None, seed, False, True, symprec, workers,
                                                  progress, cache)
        if not novelty_reference.reduced:
            raise ValueError("novelty_reference was analysed without reduced cells (novelty=False)")
        novelty_ref = [r for r in novelty_reference.results if r["parsed"]]
    if not isinstance(reference, AnalyzedReference):
        reference = analyze_reference(reference, max_reference, seed, coverage, novelty and novelty_ref is None,
                                      symprec, workers, progress, cache)
    elif (coverage and not reference.fingerprints) or (novelty and novelty_ref is None and not reference.reduced):
        raise ValueError("the analysed reference lacks fingerprints or reduced cells this evaluation needs")
    ref = reference.results
    valid = [r for r in res if r["valid"]]
    ref_ok = [r for r in ref if r["parsed"]]
    n = len(res)
    m: dict = {"n_samples": n, "n_reference": len(ref),
               "struct_valid": sum(r["struct_valid"] for r in res) / n,
               "comp_valid": sum(r["comp_valid"] for r in res) / n,
               "valid": len(valid) / n}
    m.update(property_wdist([r["density"] for r in valid], [r["n_elements"] for r in valid],
                            [r["density"] for r in ref_ok], [r["n_elements"] for r in ref_ok], n_wdist, seed))
    if coverage:
        m.update(cov_fn([r["struct_fp"] for r in res], [r["comp_fp"] for r in res],
                        [r["struct_fp"] for r in ref], [r["comp_fp"] for r in ref], *cutoffs, num_generated=n))
    m.update(space_group_stats([r["space_group"] for r in valid if r["space_group"]],
                               [r["space_group"] for r in ref_ok if r["space_group"]]))
    flags = None
    if novelty:
        un = _uniqueness_novelty(valid, ref_ok if novelty_ref is None else novelty_ref, workers, progress)
        flags = un.pop("flags", None)
        m.update(un)
    stab_records = None
    if stability is not None:
        from ..physics.stability import stability_metrics

        stab_records = stability.judge([r["structure"] for r in valid])
        unique = novel = None
        if flags is not None:
            unique, novel = [f[0] for f in flags], [f[1] for f in flags]
        m.update(stability_metrics(stab_records, n, unique, novel, stability.cutoff))
    return {
        "task": "generation", "metrics": m,
        "counts": {"samples": n, "parsed": sum(r["parsed"] for r in res), "valid": len(valid),
                   "reference": len(ref), "reference_parsed": len(ref_ok)},
        "failures": {"samples": _failures(res), "reference": _failures(ref)},
        "settings": {"dataset": dataset, "struct_cutoff": cutoffs[0], "comp_cutoff": cutoffs[1],
                     "n_wdist": n_wdist, "max_reference": max_reference,
                     "novelty_reference": None if novelty_ref is None else (novelty_reference.source or len(novelty_ref)), "max_samples": max_samples,
                     "seed": seed, "symprec": symprec, "workers": workers, **_versions()},
        "plot_data": {"sample_density": [r["density"] for r in valid],
                      "reference_density": [r["density"] for r in ref_ok],
                      "sample_n_elements": [r["n_elements"] for r in valid],
                      "reference_n_elements": [r["n_elements"] for r in ref_ok],
                      "sample_space_group": [r["space_group"] for r in valid if r["space_group"]],
                      "reference_space_group": [r["space_group"] for r in ref_ok if r["space_group"]],
                      "validity": {"parsed": sum(r["parsed"] for r in res), "struct_valid": sum(r["struct_valid"] for r in res),
                                   "comp_valid": sum(r["comp_valid"] for r in res), "valid": len(valid), "total": n}},
        **({} if stab_records is None else {"stability": {
            "hull": stability.hull_source, "potential": getattr(stability.potential, "name", "?"),
            "per_sample": [{"name": r["name"], **rec} for r, rec in zip(valid, stab_records)]}}),
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _novel_job(job) -> bool:
    from .uniqueness import is_novel_reduced

    return is_novel_reduced(*job)


def _uniqueness_novelty(valid: list[dict], ref: list[dict], workers: int, progress: bool) -> dict:
    """Uniqueness of the valid samples; novelty of the valid samples against the parsed reference."""
    from .parallel import pmap
    from .uniqueness import match_key, reference_index, unique_classes

    """Also ``flags``: per valid sample (first of its class among the samples, novel); False without a cell."""
    keep = [i for i, r in enumerate(valid) if r["reduced"] is not None]
    if not keep:
        return {"uniqueness": None, "novelty": None, "n_unique_novel_samples": 0, "flags": [(False, False)] * len(valid)}
    structs, reduced = [valid[i]["structure"] for i in keep], [valid[i]["reduced"] for i in keep]
    index = reference_index([r["reduced"] for r in ref if r["reduced"] is not None])
    novel = pmap(_novel_job, [(x, index.get(match_key(x), [])) for x in reduced],
                 workers=workers, chunksize=1, desc="novelty", progress=progress)
    labels = unique_classes(structs, reduced)
    seen, first = set(), []
    for lab in labels:
        first.append(lab not in seen)
        seen.add(lab)
    flags = [(False, False)] * len(valid)
    for j, i in enumerate(keep):
        flags[i] = (first[j], bool(novel[j]))
    return {"uniqueness": len(seen) / len(structs), "novelty": sum(novel) / len(structs),
            "n_unique_novel_samples": len(structs), "flags": flags}


def _csp_job(job) -> list:
    from .csp import csp_matcher, rms_distance
    from .parallel import STRUCTURE_ERRORS

    target, preds = job
    matcher = csp_matcher()
    out = []
    for p in preds:
        if target is None or p is None:
            out.append(None)
            continue
        try:
            out.append(rms_distance(p, target, matcher))
        except STRUCTURE_ERRORS:  # as DiffCSP: a matcher failure is a miss
            out.append(None)
    return out


def evaluate_csp(predictions, targets, ks=None, workers: int = 1, progress: bool = True,
                 max_targets: int | None = None, seed: int = 0) -> dict:
    """CSP match rate and RMSE of ``predictions`` (entries with material_id/rank, or a path) against ``targets``.

    ``ks``: the k of best-of-k to report (default 1 and the largest number of predictions per target).
    """
    from .csp import CSP_MATCHER, match_rate_and_rmse

    t0 = time.perf_counter()
    t_entries = subsample(_entries(targets), max_targets, seed)
    if not t_entries:
        raise ValueError(f"no targets in {targets}")
    ids = [e.material_id or e.name for e in t_entries]
    if len(set(ids)) != len(ids):
        dup = [k for k, v in Counter(ids).items() if v > 1]
        raise ValueError(f"targets have duplicate material_id values: {dup[:5]}")
    groups = group_predictions(_entries(predictions))
    unknown = sorted(set(groups) - set(ids))
    if groups and not set(groups) & set(ids):
        raise ValueError(f"no prediction matches a target material_id (predictions: {unknown[:5]}, "
                         f"targets: {ids[:5]})")
    k_max = max((len(v) for v in groups.values()), default=1)
    ks = sorted(set(ks or (1, k_max)))
    opt = Options(fingerprints=False, space_group=False)
    t_res = analyze_all(t_entries, opt, workers, progress, "targets")
    flat = [p for mid in ids for p in groups.get(mid, [])]
    p_res = analyze_all(flat, opt, workers, progress, "predictions")
    jobs, i = [], 0
    for mid, t in zip(ids, t_res):
        preds = p_res[i:i + len(groups.get(mid, []))]
        i += len(preds)
        target = t["structure"] if t["valid"] else None
        jobs.append((target, [p["structure"] if p["valid"] else None for p in preds]))
    from .parallel import pmap

    rms = pmap(_csp_job, jobs, workers=workers, desc="match", progress=progress)
    summary = match_rate_and_rmse(rms, ks)
    m = {f"match_rate@{k}": v["match_rate"] for k, v in summary.items()}
    m.update({f"rmse@{k}": v["rmse"] for k, v in summary.items()})
    m.update({"n_targets": len(ids), "n_targets_valid": sum(t["valid"] for t in t_res),
              "n_targets_without_prediction": sum(mid not in groups for mid in ids),
              "n_predictions": len(flat), "prediction_valid": (sum(p["valid"] for p in p_res) / len(flat)) if flat else None})
    best = match_rate_and_rmse(rms, (k_max,))[k_max]
    return {
        "task": "csp", "metrics": m, "by_k": {str(k): v for k, v in summary.items()},
        "counts": {"targets": len(ids), "predictions": len(flat), "unknown_prediction_ids": len(unknown)},
        "failures": {"targets": _failures(t_res), "predictions": _failures(p_res)},
        "settings": {"matcher": CSP_MATCHER, "ks": ks, "max_targets": max_targets, "seed": seed, "workers": workers,
                     **_versions()},
        "per_target": [{"material_id": mid, "target_valid": t["valid"], "rms_by_rank": r}
                       for mid, t, r in zip(ids, t_res, rms)],
        "plot_data": {"best_rms": [b for b in (min([x for x in r if x is not None], default=None) for r in rms)
                                   if b is not None], "k_max": k_max, "best": best},
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("pymatgen", "matminer", "smact"):
        try:
            out[f"{pkg}_version"] = version(pkg)
        except PackageNotFoundError:
            out[f"{pkg}_version"] = None
    return out


def json_ready(obj):
    """Replace numpy scalars/arrays by Python values, recursively (for json.dumps)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
