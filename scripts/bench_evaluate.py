"""Throughput of each evaluation metric (structures per second), median of several runs.

Per-metric rows time one process on --n structures of a CSV (default: the MP-20 val split);
the 'pipeline' rows time the whole per-structure analysis (parse, validity, space group,
fingerprints) through ``analyze_all`` with 1 and --workers processes.

    python scripts/bench_evaluate.py --csv ../shared/data/mp_20/val.csv --n 100 --json /tmp/bench_evaluate.json

``--cold-warm`` instead times ``evaluate_generation`` twice against the same reference (the first
--n-reference rows of --reference-csv) with --n-samples rows of --csv as samples, in a fresh
cache folder: the first (cold) run fingerprints the reference and caches it, the second (warm)
reads it back. It reports both times, their ratio and whether the metrics agree.

    python scripts/bench_evaluate.py --cold-warm --workers 1 --json runs/bench_evaluate_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _timed(fn, items, repeats: int) -> float:
    """Median structures/s of ``fn`` over ``items``."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        rates.append(len(items) / (time.perf_counter() - t0))
    return statistics.median(rates)


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def bench_cold_warm(args) -> dict:
    """Seconds of a cold and a warm ``evaluate_generation`` against the same reference (fresh cache folder)."""
    import pandas as pd

    from crystalformer.evaluation.runner import evaluate_generation, guess_dataset

    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        tmp = Path(tmp)
        reference, samples, cache = tmp / "reference.csv", tmp / "samples.csv", tmp / "cache"
        pd.read_csv(args.reference_csv).head(args.n_reference).to_csv(reference, index=False)
        pd.read_csv(args.csv).head(args.n_samples).to_csv(samples, index=False)
        dataset = guess_dataset(args.reference_csv) or "mp_20"
        seconds, metrics = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            r = evaluate_generation(samples, reference, dataset=dataset, workers=args.workers, progress=False,
                                    cache=cache)
            seconds.append(time.perf_counter() - t0)
            metrics.append(r["metrics"])
        files = list(cache.glob("reference-*.npz"))
        return {"reference_csv": str(args.reference_csv), "n_reference": r["counts"]["reference"],
                "samples_csv": str(args.csv), "n_samples": r["counts"]["samples"], "dataset": dataset,
                "workers": args.workers, "cpu_count": os.cpu_count(), "cold_s": round(seconds[0], 2),
                "warm_s": round(seconds[1], 2), "ratio": round(seconds[0] / seconds[1], 2),
                "same_metrics": metrics[0] == metrics[1], "cache_files": len(files),
                "cache_bytes": sum(f.stat().st_size for f in files)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/mp_20/val.csv")
    ap.add_argument("--n", type=int, default=100, help="structures (first N rows)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--cold-warm", action="store_true", help="time a cold and a warm (cached) evaluation instead")
    ap.add_argument("--reference-csv", type=Path,
                    default=Path(__file__).resolve().parents[1].parent / "shared/data/mp_20/train.csv")
    ap.add_argument("--n-reference", type=int, default=1000, help="reference structures (first N rows)")
    ap.add_argument("--n-samples", type=int, default=50, help="samples (first N rows of --csv)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # pymatgen's per-CIF "rounded to ideal values" notes
    if args.cold_warm:
        out = bench_cold_warm(args)
        print(f"cold {out['cold_s']:.1f} s, warm {out['warm_s']:.1f} s: {out['ratio']:.1f}x "
              f"({out['n_samples']} samples vs {out['n_reference']} reference structures, "
              f"metrics {'agree' if out['same_metrics'] else 'DIFFER'})")
        _write_json(args.json, out)
        return 0

    from pymatgen.core import Structure

    from crystalformer.evaluation.analysis import Options, analyze_all
    from crystalformer.evaluation.coverage import (
        composition_fingerprint,
        structure_fingerprint,
    )
    from crystalformer.evaluation.csp import csp_matcher
    from crystalformer.evaluation.loading import load_entries
    from crystalformer.evaluation.symmetry_stats import space_group_number
    from crystalformer.sampling.dedup import default_matcher
    from crystalformer.validity import smact_validity, structure_validity

    entries = load_entries(args.csv)[:args.n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structs = [Structure.from_str(e.cif, fmt="cif") for e in entries]
        perturbed = [s.copy().perturb(0.05) for s in structs]
    sm, csp = default_matcher(), csp_matcher()
    pairs = list(zip(structs, perturbed))
    rows = {
        "parse CIF": _timed(lambda e: Structure.from_str(e.cif, fmt="cif"), entries, args.repeats),
        "structure validity": _timed(structure_validity, structs, args.repeats),
        "SMACT validity": _timed(smact_validity, structs, args.repeats),
        # pymatgen caches spglib results per cell: each repeat gets fresh cells (sub-symprec jitter)
        "space group (symprec 0.1)": statistics.median(
            _timed(space_group_number, [s.copy().perturb(1e-5 * (r + 1)) for s in structs], 1)
            for r in range(args.repeats)),
        "Magpie fingerprint": _timed(composition_fingerprint, structs, args.repeats),
        "CrystalNN fingerprint": _timed(structure_fingerprint, structs, args.repeats),
        "StructureMatcher.fit (pairs/s)": _timed(lambda p: sm.fit(*p), pairs, args.repeats),
        "CSP get_rms_dist (pairs/s)": _timed(lambda p: csp.get_rms_dist(*p), pairs, args.repeats),
    }
    for w in sorted({1, args.workers}):
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            analyze_all(entries, Options(keep_structure=False), workers=w, progress=False)
            rates.append(len(entries) / (time.perf_counter() - t0))
        rows[f"pipeline, {w} process(es)"] = statistics.median(rates)
    print(f"| metric ({args.csv.parent.name}/{args.csv.name}, {len(entries)} structures) | structures/s |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:,.1f} |")
    _write_json(args.json, {"csv": str(args.csv), "n": len(entries), "repeats": args.repeats,
                            "cpu_count": os.cpu_count(), "structures_per_s": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
