"""Sampling throughput: crystals/s of token decoding and of turning tokens into structures.

For each preset (randomly initialised weights unless --model is given: decoding cost does not
depend on what the weights learned, only on stream lengths, so a trained model's figure is
also reported when given) and batch size: the time of batched KV-cached decoding (grammar
masks included), then of tokens -> Crystal -> pymatgen Structure. Median of --repeats runs.

    python scripts/bench_sample.py --presets small base --batch-sizes 100 1000 --json bench_sample.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def bench(model, label: str, batch: int, repeats: int, seed: int = 0) -> dict:
    from crystalformer.errors import CrystalError
    from crystalformer.sampling.api import sample

    decode_s, build_s, lengths, failures = [], [], [], 0
    for r in range(repeats):
        t = time.perf_counter()
        result = sample(model, batch, batch_size=batch, seed=seed + r)
        decode_s.append(time.perf_counter() - t)
        lengths += [len(s.ids) for s in result.samples]
        t = time.perf_counter()
        for s in result.samples:
            try:
                crystal = model.tokenizer.decode(s.ids, s.values)
                crystal.to_structure()
            except (CrystalError, ValueError, ArithmeticError):
                failures += 1
        build_s.append(time.perf_counter() - t)
    d, b = statistics.median(decode_s), statistics.median(build_s)
    return {"model": label, "parameters": model.num_parameters(), "batch": batch, "repeats": repeats,
            "decode_crystals_per_s": round(batch / d, 1), "build_crystals_per_s": round(batch / b, 1),
            "end_to_end_crystals_per_s": round(batch / (d + b), 1),
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
    parser.add_argument("--json", type=Path, default=Path("bench_sample.json"))
    args = parser.parse_args(argv)

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
            rows.append(bench(model, label, batch, args.repeats))
    machine = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    print(f"sampling throughput on {machine}, median of {args.repeats} runs")
    print(f"{'model':32} {'batch':>6} {'tokens':>7} {'decode cr/s':>12} {'build cr/s':>11} {'end-to-end':>11}")
    for r in rows:
        print(f"{r['model'][:32]:32} {r['batch']:>6} {r['mean_tokens']:>7} {r['decode_crystals_per_s']:>12,.1f} "
              f"{r['build_crystals_per_s']:>11,.1f} {r['end_to_end_crystals_per_s']:>11,.1f}")
    args.json.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
