"""Data-preparation throughput: structures per second with 1 and 2 processes.

    python scripts/bench_prepare.py --csv ../shared/data/mp_20/val.csv --repeats 3 --json bench_prepare.json

Each run rebuilds the prepared directory from scratch (``force=True``) into a temporary
directory: CIF parsing, symmetry analysis, canonical Wyckoff representation and tokenization.
Prints a table of medians and writes JSON with every run, the machine and package versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("crystalformer", "spglib", "pymatgen", "numpy")}


def bench(csv: Path, workers: int, repeats: int) -> dict:
    from crystalformer.data import PrepareConfig, prepare

    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = prepare([csv], Path(tmp) / "prepared", PrepareConfig(workers=workers), force=True,
                              progress=False)
            elapsed = time.perf_counter() - t0
        runs.append({"seconds": elapsed, "structures": summary.total, "kept": summary.kept,
                     "per_second": summary.total / elapsed})
    return {"workers": workers, "runs": runs,
            "median_per_second": statistics.median(r["per_second"] for r in runs),
            "median_seconds": statistics.median(r["seconds"] for r in runs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=Path("../shared/data/mp_20/val.csv"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("bench_prepare.json"))
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        parser.error(f"CSV not found: {args.csv}")

    results = [bench(args.csv, w, args.repeats) for w in args.workers]
    report = {"csv": str(args.csv), "machine": machine(), "versions": versions(), "results": results}
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.json)

    print(f"{args.csv} on {report['machine']['cpu']} ({report['machine']['cores']} cores), "
          f"median of {args.repeats} runs")
    print(f"{'workers':>7} {'structures':>10} {'seconds':>8} {'structures/s':>13} {'ms/structure':>13}")
    for r in results:
        n = r["runs"][0]["structures"]
        print(f"{r['workers']:>7} {n:>10} {r['median_seconds']:>8.2f} {r['median_per_second']:>13.1f} "
              f"{1000 / r['median_per_second']:>13.2f}")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
