"""Relax more of the stored candidates of a ``bench_csp_energy.py`` run, rank them again, and evaluate.

``bench_csp_energy.py`` stores, per target, the candidates it ranked by energy (relaxed structures
for the ``--relax-top`` lowest single points, the rest unrelaxed, with their energies). This script
relaxes the next lowest ones until ``--top`` per target are relaxed (the product's ``--relax-top``
default is 8; stored runs may have relaxed fewer to save time), ranks each target's candidates as
``rank_by_energy`` does (relaxed energy per atom, distinct minima, near-ties within
``--tie-window`` broken by log p, the unrelaxed after them by single point) and writes one line per
target to ``OUT/relax<top>.jsonl`` as it goes, so it can be stopped and resumed (``--reverse``
runs a second process from the other end). ``--evaluate`` matches the stored ranking and the new
one on the targets done so far (the CDVAE/DiffCSP protocol, ``evaluate_csp``) and prints both.

    OMP_NUM_THREADS=1 python scripts/rerank_csp_energy.py --run runs/cspe-mp20 --out runs/rerank --top 8
    python scripts/rerank_csp_energy.py --run runs/cspe-mp20 --out runs/rerank --top 8 --evaluate
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path


def stored_rows(run: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(run.glob("targets*.jsonl")) for line in f.read_text().splitlines()
            if line.strip()]


def rerank(row: dict, top: int, potential, relax_config, matcher, window: float) -> tuple[list[str], int]:
    """The target's candidates (CIF texts) ranked with ``top`` relaxed, and how many are relaxed."""
    from pymatgen.io.cif import CifWriter

    from crystalformer.io import structure_from_cif
    from crystalformer.physics.ranking import break_ties
    from crystalformer.physics.relax import relax_one
    from crystalformer.sampling.dedup import same_structure

    items = []  # [energy per atom, relaxed?, log p rank, structure, cif]
    have = sum(bool(i["relaxed"]) for i in row["energy_info"])
    for k, (info, cif) in enumerate(zip(row["energy_info"], row["energy"])):
        structure = structure_from_cif(cif, f"candidate {k}")
        if info["relaxed"]:
            items.append([info["energy_per_atom"], True, info["log_p_rank"], structure, cif])
        elif not info.get("relax") and have < top:  # the next lowest single point: relax it now
            have += 1
            result = relax_one(structure, potential, relax_config)
            if result.relaxed and math.isfinite(result.energy_per_atom):
                items.append([result.energy_per_atom, True, info["log_p_rank"], result.structure,
                              str(CifWriter(result.structure))])
            else:
                items.append([info["single_point_energy_per_atom"], False, info["log_p_rank"], structure, cif])
        else:
            items.append([info["energy_per_atom"], False, info["log_p_rank"], structure, cif])
    minima = []
    for item in sorted((x for x in items if x[1]), key=lambda x: x[0]):  # each distinct minimum once, its lowest
        if not any(same_structure(matcher, item[3], other[3]) for other in minima):
            minima.append(item)
    order = break_ties(list(range(len(minima))), lambda i: minima[i][0], lambda i: -minima[i][2], window)
    rest = sorted((x for x in items if not x[1]), key=lambda x: x[0])
    return [minima[i][4] for i in order] + [x[4] for x in rest], sum(x[1] for x in items)


def run(args) -> None:
    import torch

    from crystalformer.physics.potential import load_potential
    from crystalformer.physics.relax import RelaxConfig
    from crystalformer.sampling.dedup import default_matcher

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    mine = args.out / f"relax{args.top}{'_rev' if args.reverse else ''}.jsonl"
    done = lambda: {json.loads(line)["material_id"] for f in args.out.glob(f"relax{args.top}*.jsonl")  # noqa: E731
                    for line in f.read_text().splitlines() if line.strip()}
    rows = stored_rows(args.run)
    potential, matcher = load_potential(args.potential), default_matcher()
    config = RelaxConfig(fmax=args.fmax, steps=args.steps)
    with open(mine, "a") as fh:
        for n, row in (reversed(list(enumerate(rows))) if args.reverse else enumerate(rows)):
            if "error" in row or row["material_id"] in done():
                continue
            t0 = time.perf_counter()
            ranked, relaxed = rerank(row, args.top, potential, config, matcher, args.tie_window)
            fh.write(json.dumps({"material_id": row["material_id"], "ranked": ranked, "relaxed": relaxed,
                                 "wall_s": round(time.perf_counter() - t0, 1)}) + "\n")
            fh.flush()
            print(f"{n} {row['material_id']} {relaxed} relaxed {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                  flush=True)


def evaluate(args) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_csp_energy import evaluate as match
    from bench_csp_energy import with_ties_broken

    rows = {r["material_id"]: r for r in stored_rows(args.run)}
    new = {}
    for f in args.out.glob(f"relax{args.top}*.jsonl"):
        for line in f.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                new[d["material_id"]] = d
    chosen = [rows[m] for m in sorted(new) if "error" not in rows[m]]
    for r in chosen:
        r["stored"] = with_ties_broken(r, args.tie_window)
        r["reranked"] = new[r["material_id"]]["ranked"]
    out = {"run": str(args.run), "top": args.top, "tie_window": args.tie_window, "n_targets": len(chosen)}
    for key in ("stored", "reranked"):
        metrics = match(chosen, key, (1, 5, 20), args.workers)["metrics"]
        out[key] = {k: metrics[k] for k in ("match_rate@1", "match_rate@5", "match_rate@20")}
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a bench_csp_energy.py --out folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--top", type=int, default=8, help="candidates relaxed per target (default 8, as csp --rank energy)")
    p.add_argument("--tie-window", type=float, default=0.03)
    p.add_argument("--potential", default="chgnet")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--reverse", action="store_true", help="work from the last target backwards (a second process)")
    p.add_argument("--evaluate", action="store_true", help="match the targets done so far, stored vs re-ranked")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.evaluate:
        result = evaluate(args)
        (args.out / f"evaluate_relax{args.top}.json").write_text(json.dumps(result, indent=1) + "\n")
    else:
        run(args)


if __name__ == "__main__":
    main()
