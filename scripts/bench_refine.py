"""Benchmark the refiner: throughput (crystals/s) of the PC and ODE samplers, and what refinement
does to validation crystals.

- throughput: median over --repeats runs of refine_crystals on --n crystals;
- collisions: val crystals perturbed on their free parameters with N_wrap(0, sigma^2) noise
  (default 0.05); fraction with minimum interatomic distance >= 0.5 Å before and after
  refinement (integration starts at sigma = --sigma from the perturbed crystals, no extra noise),
  and the fraction matching the original (pymatgen StructureMatcher, default tolerances);
- stability: unperturbed val crystals refined SDEdit-style (noised to --sigma, then integrated);
  fraction still matching the original.

Prints a table and writes JSON:
    python scripts/bench_refine.py --model runs/refiner_mp20/model --data ../shared/data/mp_20/val.csv --json b.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path


def _valid_fraction(crystals) -> float:
    from crystalformer.sampling.output import structure_checks

    return sum(structure_checks(c)[1]["valid_structure"] for c in crystals) / len(crystals)


def _match_fraction(refs, crystals) -> float:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(sm.fit(a.to_structure(), b.to_structure()) for a, b in zip(refs, crystals)) / len(refs)


def main(argv=None) -> int:
    import torch

    from crystalformer.refine.api import refine_crystals
    from crystalformer.refine.data import load_crystals
    from crystalformer.refine.io import load_refiner
    from crystalformer.refine.symmetry import collate, crystals_from_u

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="validation CSV / CIF / prepared dir")
    p.add_argument("--n", type=int, default=200, help="crystals (the first n with at most --max-atoms atoms)")
    p.add_argument("--max-atoms", type=int, default=80)
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--pc-steps", type=int, default=50)
    p.add_argument("--ode-steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    refiner = load_refiner(args.model)
    crystals = load_crystals([args.data], max_atoms=args.max_atoms)[: args.n]
    kw = dict(sigma_start=args.sigma, batch_size=args.batch_size)
    rows = []
    for sampler, steps, calls in (("pc", args.pc_steps, 2 * args.pc_steps), ("ode", args.ode_steps, 2 * args.ode_steps)):
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            refine_crystals(refiner, crystals, sampler=sampler, n_steps=steps, seed=r, **kw)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append({"sampler": sampler, "steps": steps, "network_calls": calls, "crystals": len(crystals),
                     "median_s": round(med, 3), "crystals_per_s": round(len(crystals) / med, 2)})
    # perturbed val crystals: noise on the free parameters (orbits stay exact)
    batch = collate(crystals)
    g = torch.Generator().manual_seed(123)
    noisy = crystals_from_u(crystals, batch.noise(torch.full_like(batch.u[:, :1], args.sigma), g))
    quality = {"n": len(crystals), "sigma": args.sigma,
               "valid_original": _valid_fraction(crystals), "valid_perturbed": _valid_fraction(noisy),
               "match_perturbed": _match_fraction(crystals, noisy)}
    for sampler, steps in (("pc", args.pc_steps), ("ode", args.ode_steps)):
        fixed = refine_crystals(refiner, noisy, sampler=sampler, n_steps=steps, seed=7, noise=False, **kw)
        quality[f"valid_refined_{sampler}"] = _valid_fraction(fixed)
        quality[f"match_refined_{sampler}"] = _match_fraction(crystals, fixed)
        kept = refine_crystals(refiner, crystals, sampler=sampler, n_steps=steps, seed=8, **kw)
        quality[f"match_unperturbed_refined_{sampler}"] = _match_fraction(crystals, kept)
        quality[f"valid_unperturbed_refined_{sampler}"] = _valid_fraction(kept)
    print("| sampler | steps | network calls | crystals | median s | crystals/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['network_calls']} | {r['crystals']} | {r['median_s']} "
              f"| {r['crystals_per_s']} |")
    print("\n| quantity | value |\n|---|---|")
    for k, v in quality.items():
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "throughput": rows,
                                         "quality": quality}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
