"""Property-guided design benchmark (CDVAE-style property optimisation), guided vs unguided.

For each task (Perov-5 heat_ref, MP-20 formation_energy_per_atom):

1. a guiding property model (transformer, seed 0, 10% of train held out) and an independent
   judge (deep-set architecture, seed 1, another 10% held out) are trained on the train split
   (or reused from --work); both are scored on the val split (MAE vs the mean predictor),
   the guide's calibrated sigma by its coverage there;
2. optimisation: ``NAME=min`` designs by Metropolis-Hastings from the prior, and as many
   unguided prior samples under the same constraints; the judge's predictions give SR5 / SR10 /
   SR15 = fraction of crystals in the lowest 5 / 10 / 15% of the training distribution;
3. target value: ``NAME=q20±tol`` (q20 = the training 20% quantile), fraction of designs the
   judge puts within the tolerance, guided vs unguided.

Constraints (stated in the JSON): Perov-5 designs use the five space groups and the 56
elements of perov_5/train; MP-20 designs the elements of mp_20/train. Our splits are smaller
than the published ones (../shared/data/README.md), so the numbers are not comparable to papers.

    OMP_NUM_THREADS=1 python scripts/bench_design.py --prior runs/default/model --out runs/design-bench.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

TASKS = {
    "perov_5": {"target": "heat_ref", "tol": 0.1},
    "mp_20": {"target": "formation_energy_per_atom", "tol": 0.1},
}


def train_models(task, spec, prepared: Path, work: Path):
    from crystalformer.inverse.property import PropertyConfig, load_property_model
    from crystalformer.inverse.train import train_property

    out = {}
    for role, preset in (("guide", "small"), ("judge", "judge")):
        d = work / f"{task}-{spec['target']}-{role}"
        t0 = time.time()
        if not (d / "metadata.json").is_file():
            train_property(prepared / f"{task}-train", spec["target"], d, PropertyConfig.from_name(preset),
                           overwrite=True, progress=False)
        out[role] = load_property_model(d)
        out[role + "_train_s"] = out[role].metadata.get("wall_s", time.time() - t0)
    return out


def val_scores(model, prepared: Path, task: str, target: str) -> dict:
    from crystalformer.inverse.train import read_targets

    streams, y, _ = read_targets([prepared / f"{task}-val"], target)
    pred = model.predict_streams(streams)
    r = np.abs(pred - y)
    return {"val_mae": float(r.mean()), "mean_baseline_mae": float(np.abs(y - model.metadata["mean"]).mean()),
            "coverage_1sigma": float(np.mean(r <= model.sigma)), "coverage_2sigma": float(np.mean(r <= 2 * model.sigma)),
            "sigma": model.sigma, "num_val": len(y), "arch": model.net.config.arch}


def constraints(task: str, prepared: Path):
    from crystalformer.data import load_prepared

    data = load_prepared(prepared / f"{task}-train")
    els = set()
    sgs = set()
    for i in range(len(data)):
        c = data.crystal(i)
        els |= set(c.composition)
        sgs.add(c.space_group)
    return (sorted(sgs) if task == "perov_5" else None), sorted(els)


def validity(crystals) -> dict:
    """Fractions that are structurally valid (distances >= 0.5 Å, volume >= 0.1 Å^3) and SMACT-valid."""
    from crystalformer.sampling.output import structure_checks
    from crystalformer.validity import smact_validity

    struct, comp = [], []
    for c in crystals:
        structure, flags = structure_checks(c)
        struct.append(flags["valid_structure"])
        comp.append(structure is not None and smact_validity(structure))
    return {"valid_structure": float(np.mean(struct)), "valid_composition": float(np.mean(comp))}


def judge_streams(judge, ids, values):
    return judge.predict_streams(list(zip(ids, values)))


def run_task(task, spec, prior, prepared, work, n, steps, seed, moves):
    from crystalformer.inverse.api import UnreachableTargetError, design
    from crystalformer.inverse.train import read_targets
    from crystalformer.sampling.api import sample

    target = spec["target"]
    models = train_models(task, spec, prepared, work)
    guide, judge = models["guide"], models["judge"]
    _, y_train, _ = read_targets([prepared / f"{task}-train"], target)
    q = {k: float(np.quantile(y_train, k / 100)) for k in (5, 10, 15, 20)}
    sgs, els = constraints(task, prepared)
    row = {"task": task, "target": target, "constraints": {"space_groups": sgs, "elements": len(els)},
           "guide": val_scores(guide, prepared, task, target), "judge": val_scores(judge, prepared, task, target),
           "train_quantiles": q, "n": n, "steps": steps}
    row["guide"]["train_s"], row["judge"]["train_s"] = models["guide_train_s"], models["judge_train_s"]

    def sr(pred):
        return {f"SR{k}": float(np.mean(pred <= q[k])) for k in (5, 10, 15)}

    t0 = time.time()
    prior_samples = sample(prior, n, space_groups=sgs, elements=els, seed=seed)
    ok = [s for s in prior_samples.samples if s.crystal is not None]
    unguided = judge_streams(judge, [s.ids for s in ok], [s.values for s in ok])
    row["unguided"] = {**sr(unguided), "wall_s": round(time.time() - t0, 1), "n": len(ok),
                       "judge_mean": float(unguided.mean()), **validity([s.crystal for s in ok])}
    res = design(prior, [guide], f"{target}=min", n=n, steps=steps, space_groups=sgs, elements=els, seed=seed,
                 moves=moves, progress=True)
    guided = judge_streams(judge, [s.ids for s in res.samples], [s.values for s in res.samples])
    row["guided_min"] = {**sr(guided), "wall_s": round(res.wall_s, 1), "acceptance": res.summary()["acceptance"],
                         "guide_mean": float(res.predictions[target].mean()), "judge_mean": float(guided.mean()),
                         "five_atom_fraction": float(np.mean([s.crystal.num_atoms == 5 for s in res.samples])),
                         **validity([s.crystal for s in res.samples])}
    value, tol = round(q[20], 3), spec["tol"]
    spec_text = f"{target}={value}+-{tol}"
    try:
        res_v = design(prior, [guide], spec_text, n=n, steps=steps, space_groups=sgs, elements=els, seed=seed + 1,
                       moves=moves, progress=True)
    except UnreachableTargetError as err:
        res_v = err.result
    guided_v = judge_streams(judge, [s.ids for s in res_v.samples], [s.values for s in res_v.samples])
    row["target_value"] = {"target": spec_text,
                           "guided_within_tol_judge": float(np.mean(np.abs(guided_v - value) <= tol)),
                           "guided_within_tol_guide": float(res_v.satisfied.mean()),
                           "unguided_within_tol_judge": float(np.mean(np.abs(unguided - value) <= tol)),
                           "wall_s": round(res_v.wall_s, 1), "acceptance": res_v.summary()["acceptance"],
                           **validity([s.crystal for s in res_v.samples])}
    return row


def main() -> None:
    from crystalformer import load_model
    from crystalformer.inverse.mcmc import MoveConfig
    from crystalformer.model.files import read_metadata

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", type=Path, default=Path("runs/default/model"))
    ap.add_argument("--prepared", type=Path, default=Path("runs/prepared"))
    ap.add_argument("--work", type=Path, default=Path("runs/design-bench"), help="property models (reused)")
    ap.add_argument("--out", type=Path, default=Path("runs/design-bench.json"))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prior = load_model(args.prior)
    meta = read_metadata(args.prior)
    rows = []
    for task in args.tasks:
        moves = MoveConfig(0.2, 0.6, 0.2 if task == "perov_5" else 0.1)
        rows.append(run_task(task, TASKS[task], prior, args.prepared, args.work, args.n, args.steps, args.seed, moves))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"prior": str(args.prior), "prior_epoch": meta.get("epoch"),
                                        "prior_val_nll": meta.get("metrics", {}).get("val/nll"),
                                        "threads": torch.get_num_threads(), "tasks": rows}, indent=1) + "\n")
    print(f"{'task':<8} {'model':<6} {'val MAE':>8} {'mean MAE':>9} {'cov1σ':>6} {'cov2σ':>6}")
    for r in rows:
        for role in ("guide", "judge"):
            g = r[role]
            print(f"{r['task']:<8} {role:<6} {g['val_mae']:>8.4f} {g['mean_baseline_mae']:>9.4f} "
                  f"{g['coverage_1sigma']:>6.3f} {g['coverage_2sigma']:>6.3f}")
    print(f"\n{'task':<8} {'run':<10} {'SR5':>6} {'SR10':>6} {'SR15':>6} {'accept':>7} {'struct':>7} {'comp':>6} "
          f"{'wall s':>7}")
    for r in rows:
        for name in ("unguided", "guided_min"):
            g = r[name]
            acc = g.get("acceptance", {}).get("all") if name == "guided_min" else None
            print(f"{r['task']:<8} {name:<10} {g['SR5']:>6.3f} {g['SR10']:>6.3f} {g['SR15']:>6.3f} "
                  f"{'' if acc is None else f'{acc:.3f}':>7} {g['valid_structure']:>7.2f} {g['valid_composition']:>6.2f} "
                  f"{g['wall_s']:>7.1f}")
    print(f"\n{'task':<8} {'target':<40} {'guided':>7} {'unguided':>9} {'accept':>7}")
    for r in rows:
        t = r["target_value"]
        print(f"{r['task']:<8} {t['target']:<40} {t['guided_within_tol_judge']:>7.3f} "
              f"{t['unguided_within_tol_judge']:>9.3f} {t['acceptance']['all']:>7.3f}")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
