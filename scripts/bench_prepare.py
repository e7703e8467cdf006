"""Benchmark `crystalformer.data.prepare`: structures per second with 1, 2, ... worker processes.

Each run rebuilds from scratch (force=True) into a fresh temporary directory; the time is
the whole call (hashing, parsing, symmetry analysis, tokens, writing). The median of
``--repeats`` runs is reported per worker count, with the machine and package versions.

    python scripts/bench_prepare.py --workers 1 2 --repeats 3 --json bench_prepare.json

The default input is ../shared/data/mp_20/val.csv beside the repository (see its README).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path

from crystalformer.data import PrepareConfig, prepare
from crystalformer.hardware import describe

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_20" / "val.csv"
PACKAGES = ("crystalformer", "numpy", "spglib", "pymatgen", "pyxtal", "tokenizers", "safetensors", "torch")


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def bench(csv: Path, workers: int, repeats: int, chunk_size: int) -> dict:
    runs, total, kept = [], 0, 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
            t0 = time.perf_counter()
            summary = prepare([csv], Path(tmp) / "out", PrepareConfig(workers=workers, chunk_size=chunk_size),
                              force=True, progress=False)
            runs.append(time.perf_counter() - t0)
            total, kept = summary.total, summary.kept
    median = statistics.median(runs)
    return {"workers": workers, "structures": total, "kept": kept, "runs_s": [round(r, 3) for r in runs],
            "median_s": round(median, 3), "structures_per_s": round(total / median, 1)}


def table(results: list[dict]) -> str:
    base = results[0]["structures_per_s"]
    lines = [f"{'workers':>7}  {'structures':>10}  {'median s':>8}  {'structures/s':>12}  {'speed-up':>8}  runs (s)"]
    for r in results:
        lines.append(f"{r['workers']:>7}  {r['structures']:>10}  {r['median_s']:>8.2f}  {r['structures_per_s']:>12.1f}"
                     f"  {r['structures_per_s'] / base:>7.2f}x  {', '.join(f'{s:.2f}' for s in r['runs_s'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"CDVAE CSV (default {DEFAULT_CSV})")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per worker count; the median is kept")
    parser.add_argument("--chunk-size", type=int, default=PrepareConfig.chunk_size)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        parser.error(f"CSV not found: {args.csv}")

    info = {"csv": str(args.csv), "repeats": args.repeats, "chunk_size": args.chunk_size,
            "machine": describe(), "versions": versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    results = [bench(args.csv, w, args.repeats, args.chunk_size) for w in args.workers]
    m = info["machine"]
    print(f"{args.csv} | {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable) | Python {m['python']}")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({**info, "results": results}, indent=2) + "\n")
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
