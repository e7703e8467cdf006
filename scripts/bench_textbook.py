"""CSP of ten textbook compounds: where does the known structure rank?

For each compound of :mod:`crystalformer.textbook` (rock salt, CsCl, diamond, zincblende,
wurtzite, rutile, perovskite, fluorite, spinel, fcc Cu), structures are predicted several ways:

- ``reduced``: ``crystalformer csp --composition X --n 20`` as the README shows it (log p order);
- ``primitive``: the primitive cell's composition (``--cell primitive``), log p order;
- ``reduced_skeleton`` / ``primitive_skeleton``: what ``csp`` does by default (``--rank skeleton``):
  64 candidates ordered by the probability of their symmetry skeleton, duplicates removed, 20 kept;
- ``reduced_distinct``: what ``crystalformer csp --composition X --n 20`` writes today: log p order,
  duplicates removed, drawn again while fewer than 20 distinct remain;
- ``energy``: ``--cell primitive --rank energy`` (64 candidates, 8 relaxed, near-ties broken by
  log p), the best ranking available (needs the physics extra; skipped without it).

Each list is matched against the known structure (StructureMatcher stol=0.5, ltol=0.3,
angle_tol=10) and the 1-based rank of the first match is reported (``-`` when none of the 20
match), with the number of distinct structures among the 20 and the wall time.

    OMP_NUM_THREADS=1 python scripts/bench_textbook.py --json runs/textbook.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
import warnings
from pathlib import Path


def first_match(known, samples, matcher) -> int | None:
    for rank, s in enumerate(samples, 1):
        if s.crystal is None:
            continue
        try:
            if matcher.fit(known, s.crystal.to_structure()):
                return rank
        except Exception:  # noqa: BLE001 - a failed fit is not a match
            continue
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mp_20", help="model directory or shipped name (default: mp_20, the default model)")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--relax-top", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-energy", action="store_true", help="skip the energy ranking")
    p.add_argument("--only", help="comma-separated formulas (default: all ten)")
    p.add_argument("--ways", help="comma-separated subset of reduced, primitive, reduced_skeleton, "
                                    "primitive_skeleton, reduced_distinct, energy (default: all)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from crystalformer.evaluation.csp import csp_matcher
    from crystalformer.hardware import describe
    from crystalformer.api import predict_structure as csp
    from crystalformer.model import load_model
    from crystalformer.sampling.api import predict_structure
    from crystalformer.sampling.dedup import distinct_samples
    from crystalformer.sampling.skeleton import rank_by_skeleton
    from crystalformer.textbook import TEXTBOOK

    protocol = csp_matcher()
    model = load_model(args.model)
    energy = not args.no_energy and importlib.util.find_spec("chgnet") is not None
    if energy:
        from crystalformer.physics.potential import load_potential
        from crystalformer.physics.ranking import predict_structure_by_energy

        potential = load_potential("chgnet")
    entries = [t for t in TEXTBOOK if not args.only or t.formula in args.only.split(",")]
    rows = []
    for t in entries:
        known = t.structure()
        primitive = known.get_primitive_structure().composition.formula.replace(" ", "")
        row = {"formula": t.formula, "structure": t.name, "space_group": t.number, "primitive_formula": primitive}
        def skeleton(formula, cell):  # what `csp --rank skeleton` (the default) does
            pool = predict_structure(model, formula, n=max(2 * args.n, args.candidates), cell=cell, seed=args.seed)
            pool.samples = distinct_samples(rank_by_skeleton(model, pool.samples), args.n)[0]
            return pool

        ways = [("reduced", lambda: predict_structure(model, t.formula, n=args.n, seed=args.seed)),
                ("primitive", lambda: predict_structure(model, primitive, n=args.n, cell="primitive", seed=args.seed)),
                ("reduced_skeleton", lambda: skeleton(t.formula, "reduced")),
                ("primitive_skeleton", lambda: skeleton(primitive, "primitive")),
                ("reduced_distinct", lambda: csp(model, t.formula, n=args.n, seed=args.seed))]
        if energy:
            ways.append(("energy", lambda: predict_structure_by_energy(
                model, primitive, n=args.n, candidates=args.candidates, relax_top=args.relax_top,
                potential=potential, seed=args.seed, cell="primitive")))
        for way, run in ways:
            if args.ways and way not in args.ways.split(","):
                continue
            t0 = time.perf_counter()
            try:
                samples = run().samples
            except ValueError as err:
                row[way] = {"error": str(err)}
                continue
            wall = time.perf_counter() - t0
            built = [x for x in samples if x.crystal is not None]
            row[way] = {"rank": first_match(known, samples, protocol), "distinct": len(distinct_samples(built)[0]),
                        "returned": len(samples), "wall_s": round(wall, 1),
                        "top_space_groups": [s.crystal.space_group if s.crystal else None for s in samples[:3]]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    ways = [w for w in ("reduced", "primitive", "reduced_skeleton", "primitive_skeleton", "reduced_distinct", "energy")
            if any(w in r for r in rows)]
    summary = {}
    for w in ways:
        ranks = [r[w].get("rank") for r in rows if w in r]
        summary[w] = {"rank_1": sum(k == 1 for k in ranks), f"within_{args.n}": sum(k is not None for k in ranks),
                      "of": len(ranks), "median_wall_s": sorted(r[w].get("wall_s", 0) for r in rows if w in r)[len(ranks) // 2]}
    print(f"\nknown structure's rank among {args.n} (model {args.model}; '-' = not among them)")
    print(f"{'formula':<10}{'structure':<18}" + "".join(f"{w:>12}{'s':>7}" for w in ways))
    for r in rows:
        cells = "".join(f"{(r[w].get('rank') or '-') if w in r else 'n/a':>12}{r[w].get('wall_s', '') if w in r else '':>7}"
                        for w in ways)
        print(f"{r['formula']:<10}{r['structure']:<18}{cells}")
    for w, s in summary.items():
        print(f"{w}: rank 1 for {s['rank_1']}/{s['of']}, within {args.n} for {s[f'within_{args.n}']}/{s['of']}, "
              f"median {s['median_wall_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": rows,
                                         "summary": summary, "machine": describe()}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
