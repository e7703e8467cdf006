"""Sampling throughput: crystals/s of token decoding and of turning tokens into structures.

For each preset (randomly initialised weights unless --model is given: decoding cost does not
depend on what the weights learned, only on stream lengths, so a trained model's figure is
also reported when given) and batch size: the time of batched KV-cached decoding (grammar
masks included) and, for comparison, of decoding that recomputes the whole prefix at every
step; then of tokens -> Crystal -> pymatgen Structure, and of Structure -> CIF text.
Median of --repeats runs.

    python scripts/bench_sample.py --presets small base --batch-sizes 100 1000 --json bench_sample.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from crystalformer.hardware import label as machine_label


def bench(model, label: str, batch: int, repeats: int, seed: int = 0, no_cache: bool = True) -> dict:
    from crystalformer.errors import CrystalError
    from crystalformer.sampling.api import sample
    from crystalformer.cif import crystal_cif

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
    args = parser.parse_args(argv)

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
