"""End-to-end figures of a generative model (default: the shipped one) on the val splits.

For every data set: generation (``--n-gen`` samples, written as CIF folders, timed end to end)
evaluated with the CDVAE/DiffCSP protocol against the val split (coverage, property distances,
space groups) with novelty judged against the train split; and CSP on ``--csp-targets`` random
val targets with ``--k`` predictions each (match rate and RMSE at k = 1 and k = K). With
``--refiner`` (a directory, or ``default`` for the shipped one) both are repeated after refining
every crystal. One model serves all data sets, so generation is conditioned the way each data
set is defined (stated in the output): carbon_24 on elements {C}; perov_5 on the space groups
and elements of its train split; mp_20 unconditioned.

    python scripts/eval_default.py --data ../shared/data --out runs/eval-default --workers 2 \\
        --refiner default --json eval_default.json

prints a table per task and writes JSON (metrics, settings, timings, machine).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from crystalformer.hardware import describe

DATASETS = ("perov_5", "carbon_24", "mp_20")


def conditions(name: str, train_csv: Path) -> dict:
    """Sampling constraints that define data set ``name`` for a model trained on all of them.

    perov_5: the space groups and elements of every train crystal (rows that fail the symmetry
    analysis are counted in ``skipped``, never dropped silently).
    """
    if name == "carbon_24":
        return {"elements": ["C"]}
    if name != "perov_5":
        return {}
    from crystalformer.crystal import Crystal
    from crystalformer.errors import CrystalError
    from crystalformer.io import read_csv_records, structure_from_cif

    groups, elements, skipped = set(), set(), 0
    for rec in read_csv_records(train_csv):
        try:
            c = Crystal.from_structure(structure_from_cif(rec.cif, rec.material_id))
        except (CrystalError, ValueError):
            skipped += 1
            continue
        groups.add(c.space_group)
        elements |= {s.element for s in c.sites}
    if skipped:
        print(f"{train_csv}: {skipped} rows skipped when collecting the perov_5 conditions")
    return {"space_groups": sorted(groups), "elements": sorted(elements)}


def refine(refiner, samples: list, args) -> tuple[list, float]:
    """Refined copies of ``samples`` (Sample objects; those without a crystal stay as they are)."""
    from dataclasses import replace

    from crystalformer.refinement.api import refine_crystals

    t0 = time.perf_counter()
    ok = [i for i, s in enumerate(samples) if s.crystal is not None]
    refined = refine_crystals(refiner, [samples[i].crystal for i in ok], sigma_start=args.sigma_start, seed=args.seed,
                              sampler=args.sampler, n_steps=args.n_steps, noise=args.sampler == "pc")
    out = list(samples)
    for i, c in zip(ok, refined):
        out[i] = replace(samples[i], crystal=c)
    return out, time.perf_counter() - t0


def generation(model, name: str, data: Path, args, refiner, out: Path) -> dict:
    """Samples written as `crystalformer sample` writes them, then read back by the evaluator."""
    from crystalformer.evaluation.runner import analyze_reference, evaluate_generation
    from crystalformer.sampling.api import sample
    from crystalformer.sampling.output import write_samples

    cond = {} if args.unconditioned else conditions(name, data / name / "train.csv")
    meta = {"conditions": cond, "model": str(args.model or "default")}
    t0 = time.perf_counter()
    result = sample(model, args.n_gen, batch_size=args.batch_size, seed=args.seed, progress=True, **cond)
    t_decode = time.perf_counter() - t0
    folders = {"raw": out / f"gen_{name}"}
    counts = write_samples(result.samples, folders["raw"], overwrite=True, meta=meta)
    t_total = time.perf_counter() - t0
    timing = {"decode_s": round(t_decode, 2), "end_to_end_s": round(t_total, 2),
              "end_to_end_crystals_per_s": round(args.n_gen / t_total, 2)}
    if refiner is not None:
        refined, t_ref = refine(refiner, result.samples, args)
        timing["refine_s"] = round(t_ref, 2)
        timing["refine_crystals_per_s"] = round(sum(s.crystal is not None for s in refined) / t_ref, 2)
        folders["refined"] = out / f"gen_{name}_refined"
        write_samples(refined, folders["refined"], overwrite=True, meta={**meta, "refiner": args.refiner})
    val = analyze_reference(data / name / "val.csv", args.max_reference, args.seed, coverage=not args.no_coverage,
                            novelty=False, workers=args.workers)
    train = analyze_reference(data / name / "train.csv", None, args.seed, coverage=False, novelty=True,
                              workers=args.workers)
    metrics = {variant: evaluate_generation(folder, val, dataset=name, workers=args.workers, novelty_reference=train,
                                            seed=args.seed, coverage=not args.no_coverage)["metrics"]
               for variant, folder in folders.items()}
    return {"conditions": cond, "counts": counts, "timing": timing, "metrics": metrics,
            "folders": {k: str(v) for k, v in folders.items()}}


def csp(model, name: str, data: Path, args, refiner, out: Path) -> dict:
    """Predictions written as `crystalformer csp --targets` writes them, then matched by the evaluator."""
    from crystalformer.api import predict_targets
    from crystalformer.evaluation.analysis import Entry
    from crystalformer.evaluation.runner import evaluate_csp
    from crystalformer.io import read_csv_records
    from crystalformer.sampling.output import write_samples

    records = list(read_csv_records(data / name / "val.csv"))
    rng = np.random.default_rng(args.seed)
    pick = sorted(rng.choice(len(records), size=min(args.csp_targets, len(records)), replace=False))
    targets = [Entry(records[j].material_id, records[j].cif, material_id=records[j].material_id) for j in pick]
    t0 = time.perf_counter()
    done = predict_targets(model, records, args.k, indices=pick, seed=args.seed, progress=True)
    samples, names, extra, skipped = done.samples, done.names, done.rows, done.skipped
    wall = time.perf_counter() - t0
    timing = {"csp_s": round(wall, 2), "targets_per_s": round(len(pick) / wall, 3)}
    variants = {"raw": samples}
    if refiner is not None:
        variants["refined"], t_ref = refine(refiner, samples, args)
        timing["refine_s"] = round(t_ref, 2)
    metrics = {}
    for variant, preds in variants.items():
        folder = out / f"csp_{name}" if variant == "raw" else out / f"csp_{name}_{variant}"
        write_samples(preds, folder, overwrite=True, names=names, extra=extra, meta={"skipped": skipped})
        metrics[variant] = evaluate_csp(folder, targets, ks=(1, args.k), workers=args.workers)["metrics"]
    return {"n_targets": len(pick), "k": args.k, "skipped": skipped, "timing": timing, "metrics": metrics}


def _fmt(x, pct=False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.4f}"


def print_tables(report: dict) -> None:
    print("\nGeneration (val split as reference, novelty vs train)")
    print("| data set | variant | struct valid % | comp valid % | COV-R % | COV-P % | wdist density | wdist #el "
          "| unique % | novel % | P1 % | crystals/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in report["generation"].items():
        for variant, m in r["metrics"].items():
            speed = r["timing"]["end_to_end_crystals_per_s"] if variant == "raw" else r["timing"].get("refine_crystals_per_s")
            print(f"| {name} | {variant} | {_fmt(m['struct_valid'], 1)} | {_fmt(m['comp_valid'], 1)} | "
                  f"{_fmt(m.get('cov_recall'), 1)} | {_fmt(m.get('cov_precision'), 1)} | {_fmt(m['wdist_density'])} | "
                  f"{_fmt(m['wdist_num_elems'])} | {_fmt(m.get('uniqueness'), 1)} | {_fmt(m.get('novelty'), 1)} | "
                  f"{_fmt(m.get('frac_p1'), 1)} | {speed} |")
    print("\nCSP (random val targets)")
    print("| data set | variant | targets | match@1 % | RMSE@1 | match@k % | RMSE@k | k | s/target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in report["csp"].items():
        k = r["k"]
        for variant, m in r["metrics"].items():
            print(f"| {name} | {variant} | {r['n_targets']} | {_fmt(m['match_rate@1'], 1)} | {_fmt(m['rmse@1'])} | "
                  f"{_fmt(m[f'match_rate@{k}'], 1)} | {_fmt(m[f'rmse@{k}'])} | {k} | "
                  f"{1 / r['timing']['targets_per_s']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory or shipped name (default: the shipped default model)")
    parser.add_argument("--refiner", help="refiner directory, or 'default' for the shipped one (default: none)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--tasks", nargs="+", default=["generation", "csp"], choices=["generation", "csp"])
    parser.add_argument("--n-gen", type=int, default=1000)
    parser.add_argument("--no-coverage", action="store_true",
                        help="skip COV-R / COV-P (CrystalNN fingerprints: ~1 s per 24-atom cell on one core)")
    parser.add_argument("--unconditioned", action="store_true",
                        help="sample p(X) as it is (for a model trained on that data set alone)")
    parser.add_argument("--csp-targets", type=int, default=200)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--max-reference", type=int, default=1000, help="val structures used for coverage")
    parser.add_argument("--sigma-start", type=float, default=0.05)
    parser.add_argument("--sampler", choices=("pc", "ode"), default="ode",
                        help="refinement sampler (ode: deterministic from the crystal itself, no added noise)")
    parser.add_argument("--n-steps", type=int, default=10, help="refinement steps")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/eval-default"))
    parser.add_argument("--json", type=Path, default=Path("eval_default.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from crystalformer.model import load_model

    model = load_model(args.model)
    refiner = None
    if args.refiner:
        from crystalformer.defaults import default_dir
        from crystalformer.refinement.io import load_refiner

        refiner = load_refiner(default_dir("refiner") if args.refiner == "default" else Path(args.refiner), "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"model": str(args.model or "default"), "refiner": args.refiner, "settings": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "machine": describe(),
        "generation": {}, "csp": {}}
    for name in args.datasets:
        if "generation" in args.tasks:
            report["generation"][name] = generation(model, name, args.data, args, refiner, args.out)
        if "csp" in args.tasks:
            report["csp"][name] = csp(model, name, args.data, args, refiner, args.out)
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
        os.replace(tmp, args.json)  # after each data set: a cut-off run keeps what it measured
    print_tables(report)


if __name__ == "__main__":
    main()
