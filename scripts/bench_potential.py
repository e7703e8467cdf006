"""CHGNet relaxation and single points: what crystalformer relaxes with against stock CHGNet + ASE, side by side.

Takes --n structures from a CDVAE CSV (default: the mp_20 val split), rattles each
(0.05 Å, seeded) and strains its cell by 2 % so relaxation has work to do, then relaxes every
structure three times in one process, rotating the order of three set-ups:

- ``stock``: CHGNet's ``CHGNetCalculator`` (forces and stress from two second-order backward
  passes) under ASE's ``FrechetCellFilter``;
- ``fast_calc``: ``chgnet_forces`` (one first-order pass) under ASE's filter;
- ``fast``: ``chgnet_forces`` under the cached filter (``physics.cellfilter``), the package default.

Same FIRE settings, same starting structures; the table gives median per-structure time ratios,
total times, steps, and how far the relaxed energies differ. Single points are timed the same
way: batched with and without autograd's graph, and one at a time.

    OMP_NUM_THREADS=1 python scripts/bench_potential.py --n 40 --json runs/bench_potential.json

With --workers W (default 2) the same relaxations then run once more over W worker processes
(``--relax-workers``), for relaxations per second with and without the pool.

Timings never go into tests; the tests check that both calculators give the same numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


class _Stock:
    """The same potential, handing out CHGNet's own calculator."""

    def __init__(self, potential):
        self.potential = potential
        self.name = potential.name

    def calculator(self):
        return self.potential.calculator(fast=False)


def _structures(path: Path, n: int, seed: int):
    import numpy as np
    import pandas as pd
    from pymatgen.core import Structure

    rng = np.random.default_rng(seed)
    rows = pd.read_csv(path)
    picked = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    out = []
    for i in picked:
        s = Structure.from_str(rows["cif"].iloc[int(i)], fmt="cif")
        s.perturb(0.05, seed=int(rng.integers(2**31)))
        s.apply_strain(0.02)
        out.append(s)
    return out


def _relax(structure, potential, config, cached_filter: bool):
    """relax_one under the cached cell filter or ASE's own (the module's ``cell_filter`` swapped for the call)."""
    from ase.filters import FrechetCellFilter

    from crystalformer.physics import relax

    default = relax.cell_filter
    relax.cell_filter = default if cached_filter else FrechetCellFilter
    try:
        return relax.relax_one(structure, potential, config)
    finally:
        relax.cell_filter = default


SETUPS = ("stock", "fast_calc", "fast")


def main(argv=None) -> int:
    import torch

    from crystalformer.physics.potential import load_potential
    from crystalformer.physics.relax import RelaxConfig, relax_one

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", type=Path, default=Path("../shared/data/mp_20/val.csv"))
    p.add_argument("--n", type=int, default=40, help="structures relaxed with each calculator")
    p.add_argument("--steps", type=int, default=150, help="FIRE steps at most")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=2,
                   help="then relax the same structures over this many processes (physics.parallel); 1: skip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.csv.is_file():
        p.error(f"--csv {args.csv}: no such file")
    torch.set_num_threads(args.threads)

    fast = load_potential("chgnet")
    stock = _Stock(fast)
    structures = _structures(args.csv, args.n, args.seed)
    config = RelaxConfig(steps=args.steps, fmax=args.fmax)
    relax_one(structures[0].copy(), fast, RelaxConfig(steps=2))  # warm-up: weights, graph code paths
    rows = []
    setups = {"stock": (stock, False), "fast_calc": (fast, False), "fast": (fast, True)}
    for i, s in enumerate(structures):
        row = {"atoms": len(s)}
        for name in SETUPS[i % 3:] + SETUPS[: i % 3]:  # rotated: no set-up always runs first
            pot, cached = setups[name]
            t0 = time.perf_counter()
            r = _relax(s.copy(), pot, config, cached)
            row[name] = {"s": time.perf_counter() - t0, "steps": r.steps, "converged": r.converged,
                         "energy_per_atom": r.energy_per_atom, "error": r.error}
        rows.append(row)
        print(f"{i + 1}/{len(structures)} {len(s)} atoms: " + ", ".join(
            f"{k} {row[k]['s']:.2f} s ({row[k]['steps']} steps)" for k in SETUPS), flush=True)

    pool_row = None
    if args.workers > 1:  # the same relaxations (fast calculator) spread over worker processes
        from crystalformer.physics.parallel import close_pool, relax_many

        pooled = load_potential("chgnet", workers=args.workers)
        list(relax_many([structures[0].copy()] * args.workers, pooled, RelaxConfig(steps=2)))  # start the workers
        t0 = time.perf_counter()
        results = list(relax_many([s.copy() for s in structures], pooled, config))
        wall = time.perf_counter() - t0
        close_pool(pooled)
        same = sum(r.steps == row["fast"]["steps"] for r, row in zip(results, rows))
        pool_row = {"workers": args.workers, "wall_s": wall, "relaxations_per_s": len(rows) / wall,
                    "same_step_count": same}
        print(f"{args.workers} workers: {len(rows)} relaxations in {wall:.1f} s ({len(rows) / wall:.3f}/s); same "
              f"step count as one process for {same}", flush=True)

    # single points: batched with autograd's graph (CHGNet's default), batched without, one at a time
    model = fast.model
    sp = {}
    for rep in range(3):
        for name in ("graph", "no_grad", "one_at_a_time"):
            t0 = time.perf_counter()
            if name == "graph":
                model.predict_structure(structures, task="e", batch_size=32)
            elif name == "no_grad":
                fast.energies(structures, batch_size=32)
            else:
                for s in structures:
                    fast.energies([s], batch_size=1)
            sp.setdefault(name, []).append(len(structures) / (time.perf_counter() - t0))

    ratio = statistics.median(r["stock"]["s"] / r["fast"]["s"] for r in rows)
    same_steps = sum(r["stock"]["steps"] == r["fast"]["steps"] == r["fast_calc"]["steps"] for r in rows)
    de = [abs(r["stock"]["energy_per_atom"] - r[k]["energy_per_atom"]) for r in rows for k in ("fast", "fast_calc")
          if r["stock"]["energy_per_atom"] == r["stock"]["energy_per_atom"]
          and r[k]["energy_per_atom"] == r[k]["energy_per_atom"]]
    total = {k: sum(r[k]["s"] for r in rows) for k in SETUPS}
    steps = {k: sum(r[k]["steps"] for r in rows) for k in SETUPS}
    summary = {
        "relax_speedup_median": ratio,
        "calculator_speedup_median": statistics.median(r["stock"]["s"] / r["fast_calc"]["s"] for r in rows),
        "filter_speedup_median": statistics.median(r["fast_calc"]["s"] / r["fast"]["s"] for r in rows),
        "same_trajectory_cached_filter": sum(r["fast"]["steps"] == r["fast_calc"]["steps"]
                                             and r["fast"]["energy_per_atom"] == r["fast_calc"]["energy_per_atom"]
                                             for r in rows),
        "relax_s_total": total,
        "relaxations_per_s": {k: len(rows) / v for k, v in total.items()},
        "steps_total": steps,
        "s_per_step": {k: total[k] / max(steps[k], 1) for k in total},
        "same_step_count": same_steps,
        "energy_per_atom_abs_diff_max": max(de) if de else None,
        "single_points_per_s_median": {k: statistics.median(v) for k, v in sp.items()},
        "pool": pool_row,
    }
    print("\n| calculator | relaxations/s | s per FIRE step | steps | single points/s |")
    print("|---|---|---|---|---|")
    for k in SETUPS:
        spv = summary["single_points_per_s_median"]["graph" if k == "stock" else "no_grad"]
        print(f"| {k} | {summary['relaxations_per_s'][k]:.3f} | {summary['s_per_step'][k]:.3f} | {steps[k]} | {spv:.1f} |")
    if pool_row:
        print(f"| fast, {pool_row['workers']} workers | {pool_row['relaxations_per_s']:.3f} | | | |")
    print(f"\nmedian per-structure speed-up {ratio:.2f}x over {len(rows)} structures (calculator "
          f"{summary['calculator_speedup_median']:.2f}x, then cached filter {summary['filter_speedup_median']:.2f}x; "
          f"identical trajectory with the cached filter for {summary['same_trajectory_cached_filter']}); "
          f"same step count for {same_steps}; relaxed energies differ by at most "
          f"{summary['energy_per_atom_abs_diff_max']:.2g} eV/atom; "
          f"single points one at a time {summary['single_points_per_s_median']['one_at_a_time']:.1f}/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                   "torch": torch.__version__, "python": platform.python_version()}
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                         "summary": summary, "rows": rows, "machine": machine}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
