"""Benchmark the refiner on perturbed validation crystals: collisions, distance to the truth, cost.

For each --sigma: the first --n crystals of --data that have free Wyckoff parameters (at most
--max-atoms atoms) are perturbed by wrapped-normal noise N_wrap(0, sigma^2) on their free
parameters (orbits stay exact; seeded), then refined from there (integration starts at
sigma_start = sigma, or --sigma-start, without extra noise) by every --config. Reported before
and after refinement:

- collided: fraction with any interatomic distance < 0.5 Å (the usual "structural validity");
- rms: mean of pymatgen StructureMatcher(default tolerances).get_rms_dist(truth, crystal)[0]
  over the crystals it matches (normalized by (V / n)^(1/3), pymatgen's convention), and
  matched: the fraction it matches at all (an unmatched crystal has no RMS);
- nfe: network evaluations per crystal (counted; one call scores a whole batch), and
  ms_per_crystal: wall time of refine_crystals / crystals (at --threads torch threads).

--dsm-sigma S...: also the normalized DSM loss (1 = no better than a zero score) of the chosen
crystals at each noise level S (mean of --dsm-repeats noise draws, seeded).

Configs are SAMPLER:STEPS[:N_CORRECTOR[:SNR]], e.g. pc:50:1:0.1 or ode:25. Prints a markdown
table and writes JSON:
    python scripts/bench_refine.py --model runs/refiner-default/model --data runs/prepared/mp_20-val \
        --sigma 0.05 0.1 --config pc:50:1:0.1 ode:25 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

MIN_DISTANCE = 0.5  # Å


def _collided(crystal) -> bool:
    from crystalformer.sampling.output import structure_checks

    md = structure_checks(crystal)[1]["min_distance"]
    return md is None or md < MIN_DISTANCE


def _rms(truth, crystals) -> tuple[float | None, float]:
    """(mean normalized RMS over matched pairs, matched fraction)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher()
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in zip(truth, crystals):
            r = sm.get_rms_dist(a.to_structure(), b.to_structure())
            if r is not None:
                values.append(float(r[0]))
    mean = sum(values) / len(values) if values else None
    return mean, len(values) / len(truth)


def _quality(truth, crystals) -> dict:
    rms, matched = _rms(truth, crystals)
    return {"collided": sum(map(_collided, crystals)) / len(crystals),
            "rms": None if rms is None else round(rms, 4), "matched": round(matched, 4)}


def _dsm_by_sigma(refiner, crystals, sigmas, repeats: int, batch_size: int, seed: int) -> dict:
    """Normalized DSM loss per sigma, weighted by free coordinates (as the training loss is per batch)."""
    import torch

    from crystalformer.refinement.symmetry import collate

    out = {}
    g = torch.Generator().manual_seed(seed)
    batches = [collate(crystals[lo: lo + batch_size]) for lo in range(0, len(crystals), batch_size)]
    with torch.no_grad():
        for sigma in sigmas:
            total = weight = 0.0
            for batch in batches:
                w = float(batch.mask.sum())
                for _ in range(repeats):
                    total += refiner.loss(batch, g, "dsm", sigma=sigma).item() * w
                    weight += w
            out[sigma] = round(total / weight, 4)
    return out


def _parse_config(text: str) -> dict:
    parts = text.split(":")
    if parts[0] not in ("pc", "ode") or len(parts) < 2:
        raise SystemExit(f"--config {text!r}: expected pc:STEPS[:N_CORRECTOR[:SNR]] or ode:STEPS")
    cfg = {"sampler": parts[0], "n_steps": int(parts[1])}
    if parts[0] == "pc":
        cfg["n_corrector"] = int(parts[2]) if len(parts) > 2 else 1
        cfg["snr"] = float(parts[3]) if len(parts) > 3 else 0.1
    return cfg


def main(argv=None) -> int:
    import torch

    from crystalformer.refinement.api import refine_crystals
    from crystalformer.refinement.data import load_crystals
    from crystalformer.refinement.io import load_refiner
    from crystalformer.refinement.symmetry import collate, crystals_from_u

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="validation CSV / CIF / prepared dir")
    p.add_argument("--n", type=int, default=200, help="crystals (the first n with free parameters)")
    p.add_argument("--max-atoms", type=int, default=80)
    p.add_argument("--sigma", type=float, nargs="+", default=[0.05, 0.1], help="perturbation levels")
    p.add_argument("--sigma-start", type=float, help="integration start (default: the perturbation sigma)")
    p.add_argument("--config", nargs="+", default=["pc:50:1:0.1", "ode:25"], help="SAMPLER:STEPS[:NC[:SNR]]")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--dsm-sigma", type=float, nargs="*", default=[], help="report DSM loss at these sigmas")
    p.add_argument("--dsm-repeats", type=int, default=4)
    p.add_argument("--no-refine", action="store_true", help="only the DSM losses")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    refiner = load_refiner(args.model)
    calls = {"n": 0}
    score = refiner.score

    def counted(*a, **k):
        calls["n"] += 1
        return score(*a, **k)

    refiner.score = counted  # instance attribute: refine_crystals calls refiner.score
    crystals = [c for c in load_crystals([args.data], max_atoms=args.max_atoms)
                if any(len(s.params) for s in c.sites)][: args.n]
    n_batches = -(-len(crystals) // args.batch_size)
    dsm = _dsm_by_sigma(refiner, crystals, args.dsm_sigma, args.dsm_repeats, args.batch_size, args.seed)
    if dsm:
        print("| sigma | normalized DSM |\n|---|---|")
        for sigma, value in dsm.items():
            print(f"| {sigma:g} | {value:.3f} |")
    rows = []
    for sigma in [] if args.no_refine else args.sigma:
        batch = collate(crystals)
        g = torch.Generator().manual_seed(args.seed)
        noisy = crystals_from_u(crystals, batch.noise(torch.full_like(batch.u[:, :1], sigma), g))
        before = _quality(crystals, noisy)
        rows.append({"sigma": sigma, "config": "perturbed (before)", "nfe": 0, "ms_per_crystal": 0.0, **before})
        print(rows[-1], flush=True)
        for text in args.config:
            cfg = _parse_config(text)
            start = args.sigma_start or sigma
            calls["n"] = 0
            t0 = time.perf_counter()
            fixed = refine_crystals(refiner, noisy, sigma_start=start, noise=False, seed=7,
                                    batch_size=args.batch_size, **cfg)
            wall = time.perf_counter() - t0
            rows.append({"sigma": sigma, "config": f"{text} from {start:g}", "nfe": calls["n"] / n_batches,
                         "ms_per_crystal": round(1e3 * wall / len(crystals), 1), **_quality(crystals, fixed)})
            print(rows[-1], flush=True)
    print(f"\n{len(crystals)} crystals of {args.data}, {args.threads} thread(s)\n")
    print("| sigma | refinement | collided (<0.5 Å) | mean RMS (matched) | matched | NFE/crystal | ms/crystal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sigma']} | {r['config']} | {r['collided']:.3f} | {r['rms']} | {r['matched']:.3f} "
              f"| {r['nfe']:g} | {r['ms_per_crystal']} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "n": len(crystals), "dsm": dsm, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
