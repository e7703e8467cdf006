"""Ceilings of the generation metrics on real data: a data set's val split as "samples", its train split as reference.

For every data set under ../shared/data (or --data): evaluates val against train with
``crystalformer.evaluation.runner.evaluate_generation`` and prints one table row per data set. A
data set without a val split (mpts_52 here) is split: ``--max-samples`` rows of its train file
become the samples and a disjoint subset of the rest the reference (fixed seed).
CrystalNN fingerprints are slow (~0.1-0.4 s per structure per core), so both sides are
subsampled with a fixed seed by default; pass --max-samples 0 --max-reference 0 for full sets.

    python scripts/evaluate_reference.py --workers 2 --json /tmp/eval_reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

COLUMNS = [("valid", "valid %", 100), ("comp_valid", "comp %", 100), ("struct_valid", "struct %", 100),
           ("cov_recall", "COV-R %", 100), ("cov_precision", "COV-P %", 100), ("wdist_density", "wdist rho", 1),
           ("wdist_num_elems", "wdist Nel", 1), ("frac_p1", "P1 %", 100), ("sg_chi2", "SG chi2", 1),
           ("uniqueness", "unique %", 100), ("novelty", "novel %", 100)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--datasets", nargs="*", default=None, help="names of subfolders (default: all)")
    ap.add_argument("--max-samples", type=int, default=1000, help="samples per data set (0: all; default 1000)")
    ap.add_argument("--max-reference", type=int, default=2000, help="reference rows (0: all; default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True, help="where to write all results")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    from crystalformer.evaluation.loading import load_entries
    from crystalformer.evaluation.runner import evaluate_generation, json_ready

    if args.json.exists() and not args.overwrite:
        print(f"{args.json} exists; pass --overwrite", file=sys.stderr)
        return 2
    names = args.datasets or sorted(p.name for p in args.data.iterdir() if (p / "train.csv").is_file())
    max_s, max_r = args.max_samples or None, args.max_reference or None
    results = {}
    for name in names:
        folder = args.data / name
        if (folder / "val.csv").is_file():
            samples, reference, split = load_entries(folder / "val.csv"), load_entries(folder / "train.csv"), "val vs train"
        else:  # no val split: disjoint random parts of train
            import numpy as np

            rows = load_entries(folder / "train.csv")
            order = np.random.default_rng(args.seed).permutation(len(rows))
            k = min(max_s or len(rows) // 3, len(rows) // 3)
            samples, reference = [rows[i] for i in order[:k]], [rows[i] for i in order[k:]]
            split = f"train rows split {k} / {len(rows) - k} (seed {args.seed})"
        print(f"{name}: {len(samples)} samples, {len(reference)} reference ({split})", file=sys.stderr, flush=True)
        r = evaluate_generation(samples, reference, dataset=name, max_samples=max_s, max_reference=max_r,
                                seed=args.seed, workers=args.workers)
        r.pop("plot_data")
        r["split"] = split
        results[name] = r
        _write(args.json, {"data": str(args.data), "results": json_ready(results)})
        print(f"  done in {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(table(results))
    return 0


def table(results: dict) -> str:
    head = "| data set | samples | reference | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for name, r in results.items():
        m = r["metrics"]
        cells = [_fmt(m.get(k), scale) for k, _, scale in COLUMNS]
        lines.append(f"| {name} | {m['n_samples']:,} | {m['n_reference']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v, scale) -> str:
    if v is None:
        return "n/a"
    return f"{v * scale:.2f}" if scale == 100 else f"{v:.4f}"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
