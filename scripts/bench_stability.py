"""De novo generation judged by the potential: validity raw / refined / relaxed, stable and S.U.N. rates.

1. ``--n`` crystals sampled from the model (as ``crystalformer sample``), written to OUT/raw;
2. structural validity after the shipped refiner (OUT/refined);
3. a random ``--relax-subset`` of the raw samples relaxed with the potential (symmetry kept),
   written to OUT/relaxed (relaxing all 1,000 takes hours on a 2-core CPU);
4. ``evaluate generation --energy`` on raw and relaxed: E_hull on the reference hull (single
   points at the structures as written), stable rate (E_hull <= 0.08 eV/atom) and S.U.N.
   (novel against ``--train``), with the E_hull histogram in OUT/*.png;
5. potential throughput: single points per second batched and one at a time, relaxations per second.

    OMP_NUM_THREADS=1 python scripts/bench_stability.py --n 1000 --relax-subset 200 \\
        --hull crystalformer/_default/hull/mp20_mpts52_train_chgnet.csv --out runs/stability --json stability.json
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mp_20")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--relax-subset", type=int, default=200)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hull", type=Path, required=True)
    p.add_argument("--val", type=Path, default=Path("../shared/data/mp_20/val.csv"))
    p.add_argument("--train", type=Path, default=Path("../shared/data/mp_20/train.csv"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path)
    p.add_argument("--wait-for-hull", action="store_true", help="wait until --hull exists before judging")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from crystalformer.defaults import default_dir
    from crystalformer.evaluation.report import write_report
    from crystalformer.evaluation.runner import evaluate_generation
    from crystalformer.hardware import describe
    from crystalformer.model import load_model
    from crystalformer.physics.hull import ReferenceHull
    from crystalformer.physics.potential import load_potential
    from crystalformer.physics.relax import RelaxConfig
    from crystalformer.physics.samples import relax_samples
    from crystalformer.physics.stability import StabilityJudge
    from crystalformer.refinement.api import refine_crystals
    from crystalformer.sampling.api import sample
    from crystalformer.sampling.output import structure_checks, write_samples

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "machine": describe(),
              "note": "mp_20 val / train here are development copies, smaller than the published splits"}
    model = load_model(args.model)
    t0 = time.perf_counter()
    raw = sample(model, args.n, seed=args.seed, progress=True).samples
    report["sample_s"] = round(time.perf_counter() - t0, 1)
    write_samples(raw, args.out / "raw", overwrite=True)
    valid = lambda samples: float(np.mean([structure_checks(s.crystal)[1]["valid_structure"] for s in samples]))
    ok = [i for i, s in enumerate(raw) if s.crystal is not None]
    t0 = time.perf_counter()
    refined_crystals = refine_crystals(default_dir("refiner"), [raw[i].crystal for i in ok], seed=args.seed)
    report["refine_s"] = round(time.perf_counter() - t0, 1)
    from dataclasses import replace

    refined = list(raw)
    for i, c in zip(ok, refined_crystals):
        refined[i] = replace(raw[i], crystal=c)
    write_samples(refined, args.out / "refined", overwrite=True)
    rng = np.random.default_rng(args.seed)
    subset = sorted(int(i) for i in rng.choice(len(raw), size=min(args.relax_subset, len(raw)), replace=False))
    potential = load_potential("chgnet")
    t0 = time.perf_counter()
    relaxed, counts = relax_samples([raw[i] for i in subset], potential, RelaxConfig(steps=args.steps), progress=True)
    relax_s = time.perf_counter() - t0
    write_samples(relaxed, args.out / "relaxed", overwrite=True,
                  names=[f"sample_{i:05d}" for i in subset])
    report["validity"] = {"raw": valid(raw), "refined": valid(refined),
                          "raw_on_relax_subset": valid([raw[i] for i in subset]), "relaxed": valid(relaxed),
                          "relax_subset": len(subset), "relax_outcomes": dict(counts)}
    report["relax_s_per_crystal"] = relax_s / max(len(subset), 1)
    while args.wait_for_hull and not args.hull.is_file():  # the hull may still be building in another process
        time.sleep(30)
    judge = StabilityJudge(ReferenceHull.load(args.hull), potential, hull_source=str(args.hull))
    for name in ("raw", "relaxed"):
        res = evaluate_generation(args.out / name, args.val, dataset="mp_20", coverage=False, workers=args.workers,
                                  novelty_reference=args.train, stability=judge, seed=args.seed)
        (args.out / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
        write_report(res, args.out / f"{name}.png")
        report[name] = {k: res["metrics"].get(k) for k in ("n_samples", "struct_valid", "comp_valid", "valid",
                                                           "uniqueness", "novelty", "stable_rate", "sun_rate",
                                                           "n_stable", "n_sun", "n_energy", "n_no_hull",
                                                           "n_potential_failed", "e_hull_median")}
    # throughput of the potential on the raw valid samples
    structs = [s.crystal.to_structure().get_primitive_structure() for s in raw[:64] if s.crystal is not None]
    t0 = time.perf_counter()
    potential.energies(structs, batch_size=32)
    batched = len(structs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in structs:
        potential.energies([s], batch_size=1)
    single = len(structs) / (time.perf_counter() - t0)
    report["throughput"] = {"single_points_per_s_batched": batched, "single_points_per_s_one_at_a_time": single,
                            "relaxations_per_s": 1 / report["relax_s_per_crystal"],
                            "structures": len(structs), "threads": 1}
    print(json.dumps({k: v for k, v in report.items() if k not in ("settings", "machine")}, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
