"""Refinement vs decoding: wall time on the same crystals, side by side in one process.

Decodes --n crystals with the shipped generative model (``sample(model, n, batch_size=n,
seed=--seed)``), then refines the decoded crystals with each refiner of --refiners (default: the
shipped one; ``refine_crystals`` defaults: probability-flow ODE, --steps Heun steps from sigma
0.05, batches of --refine-batch-size). Everything runs --repeats times, interleaved (decode,
refiner 1, refiner 2, ..., decode, ...), at --threads torch threads, after a warm-up on 8
crystals; the medians are compared (goal: refine/decode <= 1). Prints a markdown table and
writes JSON to --json.

    OMP_NUM_THREADS=1 python scripts/bench_refine_speed.py --n 1000 --repeats 3 \
        --refiners shipped path/to/other/refiner

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
    p.add_argument("--validity", action="store_true",
                   help="also report structural validity (0.5 Å) and plausible contacts (>= 0.7 x covalent radii) "
                        "of the decoded crystals and of each refiner's output")
    p.add_argument("--refiners", nargs="+", default=["shipped"],
                   help="refiner folders timed side by side ('shipped': the package's default)")
    p.add_argument("--json", type=Path, default=Path("runs/bench_refine_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model()
    refiners = {name: load_refiner(default_dir("refiner") if name == "shipped" else name) for name in args.refiners}

    def decode(n: int):
        return sample(model, n, batch_size=n, seed=args.seed).crystals

    def refine(refiner, crystals):
        return refine_crystals(refiner, crystals, n_steps=args.steps, batch_size=args.refine_batch_size)

    warm = [c for c in decode(8) if c is not None]  # warm-up: first-call costs out of the timings
    for refiner in refiners.values():
        refine(refiner, warm)
    decode_s: list[float] = []
    refine_s: dict[str, list[float]] = {name: [] for name in refiners}
    runs: dict[str, list] = {name: [] for name in refiners}
    crystals: list = []
    for r in range(args.repeats):
        decoded, t = _timed(lambda: decode(args.n))
        decode_s.append(t)
        crystals = crystals or [c for c in decoded if c is not None]
        line = f"repeat {r + 1}: decode {decode_s[-1]:.2f} s"
        for name, refiner in refiners.items():
            refined, t = _timed(lambda: refine(refiner, crystals))  # noqa: B023 (called at once)
            refine_s[name].append(t)
            runs[name].append(refined)
            line += f", refine[{name}] {t:.2f} s"
        print(line, flush=True)
    dec = statistics.median(decode_s)
    atoms = [c.num_atoms for c in crystals]
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "package": str(Path(crystalformer.__file__).parent),
        "torch": torch.__version__,
        "crystals": len(crystals),
        "with_free_parameters": sum(any(s.params for s in c.sites) for c in crystals),
        "atoms_mean": round(statistics.mean(atoms), 2), "atoms_max": max(atoms),
        "ordered_pairs": _pairs(crystals),
        "decode_s": [round(t, 3) for t in decode_s],
        "decode_median_s": round(dec, 3),
        "decode_crystals_per_s": round(args.n / dec, 1),
        "refiners": {},
    }
    for name, refiner in refiners.items():
        ref = statistics.median(refine_s[name])
        result["refiners"][name] = {
            "network": getattr(refiner.config.network, "kind", "pairs"),
            "refine_s": [round(t, 3) for t in refine_s[name]], "refine_median_s": round(ref, 3),
            "refine_crystals_per_s": round(len(crystals) / ref, 1), "refine_over_decode": round(ref / dec, 3),
            "repeat_max_param_change": max((_max_param_change(runs[name][0], x) for x in runs[name][1:]),
                                           default=0.0),
        }
    if args.validity:
        from crystalformer.sampling.output import structure_checks

        def rates(found) -> dict:
            flags = [structure_checks(c)[1] for c in found]
            return {k: round(sum(bool(f[k]) for f in flags) / len(flags), 4)
                    for k in ("valid_structure", "plausible_contacts")}

        result["validity"] = {"decoded": rates(crystals), **{name: rates(runs[name][0]) for name in refiners}}
    print(f"\n{len(crystals)} crystals (mean {result['atoms_mean']} atoms, max {result['atoms_max']}; "
          f"{result['ordered_pairs']:,} ordered pairs), {args.threads} thread(s), median of {args.repeats}\n")
    print("| step | median s | crystals/s | / decode | runs (s) |\n|---|---|---|---|---|")
    print(f"| decode | {dec:.2f} | {result['decode_crystals_per_s']} | 1 | {result['decode_s']} |")
    for name, r in result["refiners"].items():
        print(f"| refine {name} ({r['network']}; ode, {args.steps} steps) | {r['refine_median_s']:.2f} "
              f"| {r['refine_crystals_per_s']} | {r['refine_over_decode']:.2f} | {r['refine_s']} |")
    if args.validity:
        print("\n| crystals | structurally valid | plausible contacts |\n|---|---|---|")
        for name, r in result["validity"].items():
            print(f"| {name} | {100 * r['valid_structure']:.1f} % | {100 * r['plausible_contacts']:.1f} % |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
