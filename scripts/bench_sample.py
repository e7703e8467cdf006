"""Sampling throughput: crystals/s of token decoding and of turning tokens into structures.

For each preset (randomly initialised weights unless --model is given: decoding cost does not
depend on what the weights learned, only on stream lengths, so a trained model's figure is
also reported when given) and batch size: the time of batched KV-cached decoding (grammar
masks included) and, for comparison, of decoding that recomputes the whole prefix at every
step; then of tokens -> Crystal -> pymatgen Structure, and of Structure -> CIF text.
Median of --repeats runs.

    python scripts/bench_sample.py --presets small base --batch-sizes 100 1000 --json bench_sample.json

--compare REV times today's code against a git revision side by side, because absolute times
on shared machines drift by 2x between runs: REV and today's code (HEAD with uncommitted changes
to tracked files, via ``git stash create``) are checked out in temporary worktrees, and
each repeat runs one worker process per side (order alternating), each importing its own
tree's package and timing decode, Structure building and CIF writing (the writer that
revision's CLI uses) of one batch with the same model weights, seed and threads. Prints each
side's medians and the ratios (today / REV):

    python scripts/bench_sample.py --compare f717816 --batch-sizes 1000 --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from crystalformer.hardware import label as machine_label


def bench(model, label: str, batch: int, repeats: int, seed: int = 0, no_cache: bool = True) -> dict:
    from crystalformer.cif import crystal_cif
    from crystalformer.errors import CrystalError
    from crystalformer.sampling.api import sample

    decode_s, nocache_s, build_s, cif_s, lengths, failures = [], [], [], [], [], 0
    for r in range(repeats):
        t = time.perf_counter()
        result = sample(model, batch, batch_size=batch, seed=seed + r)
        decode_s.append(time.perf_counter() - t)
        if no_cache:
            t = time.perf_counter()
            sample(model, batch, batch_size=batch, seed=seed + r, kv_cache=False)
            nocache_s.append(time.perf_counter() - t)
        lengths += [len(s.ids) for s in result.samples]
        crystals = []
        t = time.perf_counter()
        for s in result.samples:
            try:
                crystal = model.tokenizer.decode(s.ids, s.values)
                crystal.to_structure()
                crystals.append(crystal)
            except (CrystalError, ValueError, ArithmeticError):
                failures += 1
        build_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i, crystal in enumerate(crystals):  # the CIF the CLI writes: the crystal's own symmetry
            crystal_cif(crystal, f"sample_{i:05d}")
        cif_s.append(time.perf_counter() - t)
    d, b, c = statistics.median(decode_s), statistics.median(build_s), statistics.median(cif_s)
    return {"model": label, "parameters": model.num_parameters(), "batch": batch, "repeats": repeats,
            "decode_crystals_per_s": round(batch / d, 1),
            "decode_no_cache_crystals_per_s": round(batch / statistics.median(nocache_s), 1) if nocache_s else None,
            "structure_crystals_per_s": round(batch / b, 1), "cif_crystals_per_s": round(batch / c, 1),
            "end_to_end_crystals_per_s": round(batch / (d + b + c), 1),
            "mean_tokens": round(sum(lengths) / len(lengths), 1), "build_failures": failures}


def worker(model_dir: Path, batch: int, seed: int, threads: int) -> dict:
    """One timed batch with whichever ``crystalformer`` is first on the path (works on old revisions too)."""
    torch.set_num_threads(threads)
    import crystalformer
    from crystalformer.model import load_model
    from crystalformer.sampling.api import sample

    try:  # today's writer: the crystal's own symmetry
        from crystalformer.cif import crystal_cif

        def cif(crystal, structure, name):
            return crystal_cif(crystal, name)
    except ImportError:  # older revisions: pymatgen's CifWriter with spglib, as their CLI wrote
        from crystalformer.sampling.output import _cif_text

        def cif(crystal, structure, name):
            return _cif_text(structure)

    model = load_model(model_dir).eval()
    sample(model, 8, batch_size=8, seed=seed)  # warm-up: first-call allocations and imports
    t0 = time.perf_counter()
    result = sample(model, batch, batch_size=batch, seed=seed)
    t1 = time.perf_counter()
    built = []
    for s in result.samples:
        try:
            crystal = model.tokenizer.decode(s.ids, s.values)
            built.append((crystal, crystal.to_structure()))
        except (ValueError, ArithmeticError):  # CrystalError is a ValueError; failures are counted ("built")
            continue
    t2 = time.perf_counter()
    for i, (crystal, structure) in enumerate(built):
        cif(crystal, structure, f"sample_{i:05d}")
    t3 = time.perf_counter()
    return {"package": str(Path(crystalformer.__file__).parent), "decode_s": t1 - t0, "structure_s": t2 - t1,
            "cif_s": t3 - t2, "built": len(built), "tokens": sum(len(s.ids) for s in result.samples) / batch}


def compare(rev: str, model_dir: Path, batches: list[int], repeats: int, threads: int) -> dict:
    """Today's tree and ``rev`` timed in alternating worker processes; medians and ratios (today / rev)."""
    root = Path(__file__).resolve().parents[1]
    sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    # today's code is frozen too (HEAD plus uncommitted changes to tracked files), so edits made
    # while the benchmark runs cannot reach its workers
    today = subprocess.run(["git", "-C", str(root), "stash", "create"], check=True, capture_output=True,
                           text=True).stdout.strip() or "HEAD"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        trees = {"today": Path(tmp) / "today", sha: Path(tmp) / "old"}
        for side, rev in (("today", today), (sha, sha)):
            subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(trees[side]), rev], check=True,
                           capture_output=True)
        try:
            for batch in batches:
                runs = {"today": [], sha: []}
                for r in range(repeats):
                    order = list(trees.items())
                    for side, path in order if r % 2 == 0 else order[::-1]:
                        env = dict(os.environ, PYTHONPATH=str(path), OMP_NUM_THREADS=str(threads))
                        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                                              "--model", str(model_dir), "--batch-sizes", str(batch), "--seed",
                                              str(r), "--threads", str(threads)], env=env, cwd=tmp, check=False,
                                             capture_output=True, text=True)
                        if out.returncode:
                            raise RuntimeError(f"the {side} worker failed:\n{out.stderr[-3000:]}")
                        runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
                        if not runs[side][-1]["package"].startswith(str(path)):
                            raise RuntimeError(f"worker imported {runs[side][-1]['package']}, not {path}")
                rows.append({"batch": batch, "today": _medians(runs["today"], batch),
                             sha: _medians(runs[sha], batch), "runs": runs})
        finally:
            for path in trees.values():
                subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], check=False,
                               capture_output=True)
    for row in rows:
        row["ratio"] = {k: round(row["today"][k] / row[sha][k], 2) for k in row["today"] if k.endswith("per_s")}
    return {"revision": sha, "threads": threads, "repeats": repeats, "rows": rows}


def _medians(runs: list[dict], batch: int) -> dict:
    d, b, c = (statistics.median(r[k] for r in runs) for k in ("decode_s", "structure_s", "cif_s"))
    built = statistics.median(r["built"] for r in runs)
    return {"decode_per_s": round(batch / d, 1), "structure_per_s": round(built / b, 1),
            "cif_per_s": round(built / c, 1), "end_to_end_per_s": round(batch / (d + b + c), 1),
            "mean_tokens": round(statistics.median(r["tokens"] for r in runs), 1)}


def print_compare(result: dict, machine: str) -> None:
    sha = result["revision"]
    print(f"side by side on {machine}: today vs {sha}, {result['threads']} threads, median of {result['repeats']} "
          "alternating runs (crystals/s; CIF and structure per built crystal)")
    print(f"{'batch':>6} {'side':>8} {'decode':>9} {'structure':>10} {'CIF':>9} {'end-to-end':>11}")
    for row in result["rows"]:
        for side in ("today", sha, "ratio"):
            r = row[side]
            print(f"{row['batch']:>6} {side:>8} {r['decode_per_s']:>9,.1f} {r['structure_per_s']:>10,.1f} "
                  f"{r['cif_per_s']:>9,.1f} {r['end_to_end_per_s']:>11,.1f}{'x' if side == 'ratio' else ''}")


def main(argv=None) -> int:
    from crystalformer import CrystalTokenizer, ModelConfig
    from crystalformer.model import CrystalFormer, load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["small", "base"])
    parser.add_argument("--model", type=Path, action="append", default=[], help="trained model directory (repeatable)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-cache-max-batch", type=int, default=1000,
                        help="also time decoding without the KV cache up to this batch size")
    parser.add_argument("--json", type=Path, default=Path("bench_sample.json"))
    parser.add_argument("--compare", metavar="REV", help="time today's code against this git revision side by side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    default_model = Path(__file__).resolve().parents[1] / "crystalformer" / "_default" / "model"
    if args.worker:
        print(json.dumps(worker(args.model[0], args.batch_sizes[0], args.seed, args.threads or 1)))
        return 0
    if args.compare:
        result = compare(args.compare, (args.model or [default_model])[0].resolve(), args.batch_sizes, args.repeats,
                         args.threads or 2)
        machine = machine_label("cpu")
        print_compare(result, machine)
        args.json.write_text(json.dumps({"machine": machine, **result}, indent=2) + "\n")
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    models = []
    for preset in args.presets:
        torch.manual_seed(0)
        models.append((f"{preset} (random)", CrystalFormer(ModelConfig.from_name(preset), CrystalTokenizer())))
    for path in args.model:
        models.append((str(path), load_model(path)))
    rows = []
    for label, model in models:
        model = model.to(args.device).eval()
        for batch in args.batch_sizes:
            rows.append(bench(model, label, batch, args.repeats, no_cache=batch <= args.no_cache_max_batch))
    machine = machine_label(args.device)
    print(f"sampling throughput on {machine}, median of {args.repeats} runs")
    print(f"{'model':28} {'batch':>6} {'tokens':>7} {'decode':>9} {'no cache':>9} {'structure':>10} {'CIF':>8} "
          f"{'end-to-end':>11}   (crystals/s)")
    for r in rows:
        nc = r["decode_no_cache_crystals_per_s"]
        print(f"{r['model'][:28]:28} {r['batch']:>6} {r['mean_tokens']:>7} {r['decode_crystals_per_s']:>9,.1f} "
              f"{'-' if nc is None else f'{nc:,.1f}':>9} {r['structure_crystals_per_s']:>10,.1f} "
              f"{r['cif_crystals_per_s']:>8,.1f} {r['end_to_end_crystals_per_s']:>11,.1f}")
    args.json.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
