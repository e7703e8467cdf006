"""Refinement vs decoding: wall time on the same crystals, side by side in one process.

Decodes --n crystals with the shipped generative model (``sample(model, n, batch_size=n,
seed=--seed)``), then refines the decoded crystals with the shipped refiner
(``refine_crystals`` defaults: probability-flow ODE, --steps Heun steps from sigma 0.05,
batches of --refine-batch-size). Both run --repeats times, interleaved (decode, refine, decode,
...), at --threads torch threads, after a warm-up on 8 crystals; the medians are compared
(goal: refine/decode <= 1). Prints a markdown table and writes JSON to --json.

    OMP_NUM_THREADS=1 python scripts/bench_refine_speed.py --n 1000 --repeats 3

The script only calls the public ``sample`` and ``refine_crystals``, so an older checkout of
the package can be timed with the same script (PYTHONPATH=that checkout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _pairs(crystals) -> int:
    """Ordered atom pairs sum_b N_b (N_b - 1) of the crystals with free parameters (what the network sees)."""
    return sum(c.num_atoms * (c.num_atoms - 1) for c in crystals if any(s.params for s in c.sites))


def _max_param_change(a, b) -> float:
    """Largest change of any free parameter between two runs (wrapped), to check they agree."""
    worst = 0.0
    for x, y in zip(a, b):
        for s, t in zip(x.sites, y.sites):
            for p, q in zip(s.params, t.params):
                d = abs(p - q) % 1.0
                worst = max(worst, min(d, 1.0 - d))
    return worst


def main(argv=None) -> int:
    import torch

    import crystalformer
    from crystalformer.defaults import default_dir
    from crystalformer.model import load_model
    from crystalformer.refinement.api import refine_crystals
    from crystalformer.refinement.io import load_refiner
    from crystalformer.sampling.api import sample

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="crystals decoded and refined")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=10, help="ODE (Heun) steps of the refinement")
    p.add_argument("--refine-batch-size", type=int, default=64)
    p.add_argument("--json", type=Path, default=Path("runs/bench_refine_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model()
    refiner = load_refiner(default_dir("refiner"))

    def decode(n: int):
        return sample(model, n, batch_size=n, seed=args.seed).crystals

    def refine(crystals):
        return refine_crystals(refiner, crystals, n_steps=args.steps, batch_size=args.refine_batch_size)

    refine([c for c in decode(8) if c is not None])  # warm-up: first-call costs out of the timings
    decode_s, refine_s, runs = [], [], []
    crystals: list = []
    for r in range(args.repeats):
        decoded, t = _timed(lambda: decode(args.n))
        decode_s.append(t)
        crystals = crystals or [c for c in decoded if c is not None]
        refined, t = _timed(lambda: refine(crystals))  # noqa: B023 (called at once)
        refine_s.append(t)
        runs.append(refined)
        print(f"repeat {r + 1}: decode {decode_s[-1]:.2f} s, refine {refine_s[-1]:.2f} s", flush=True)
    dec, ref = statistics.median(decode_s), statistics.median(refine_s)
    atoms = [c.num_atoms for c in crystals]
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "package": str(Path(crystalformer.__file__).parent),
        "torch": torch.__version__,
        "crystals": len(crystals),
        "with_free_parameters": sum(any(s.params for s in c.sites) for c in crystals),
        "atoms_mean": round(statistics.mean(atoms), 2), "atoms_max": max(atoms),
        "ordered_pairs": _pairs(crystals),
        "decode_s": [round(t, 3) for t in decode_s], "refine_s": [round(t, 3) for t in refine_s],
        "decode_median_s": round(dec, 3), "refine_median_s": round(ref, 3),
        "decode_crystals_per_s": round(args.n / dec, 1), "refine_crystals_per_s": round(len(crystals) / ref, 1),
        "refine_over_decode": round(ref / dec, 3),
        "repeat_max_param_change": max((_max_param_change(runs[0], x) for x in runs[1:]), default=0.0),
    }
    print(f"\n{len(crystals)} crystals (mean {result['atoms_mean']} atoms, max {result['atoms_max']}; "
          f"{result['ordered_pairs']:,} ordered pairs), {args.threads} thread(s), median of {args.repeats}\n")
    print("| step | median s | crystals/s | runs (s) |\n|---|---|---|---|")
    print(f"| decode | {dec:.2f} | {result['decode_crystals_per_s']} | {result['decode_s']} |")
    print(f"| refine (ode, {args.steps} steps) | {ref:.2f} | {result['refine_crystals_per_s']} "
          f"| {result['refine_s']} |")
    print(f"\nrefine / decode = {result['refine_over_decode']:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
