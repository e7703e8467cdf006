"""Training throughput, old pipeline against new, side by side in one process: crystals/s and tokens/s.

A training step here is what the data loader and the optimiser do for one batch at
``num_workers=0`` (the CPU default): build the batch, forward, backward, AdamW step. Two
pipelines run interleaved (``baseline, fast, baseline, fast, ...``) so that the noise of a
shared machine hits both alike; the table gives medians and the ratio.

- ``baseline`` (the pipeline before the fast-path work): shuffled batches, grammar masks built
  in Python per crystal in ``collate`` (B x T x V booleans), the for-each AdamW;
- ``fast``: length-bucketed batches (``TrainConfig.bucket``), masks computed on the device
  from tables only at the discrete targets (``model/masks.py``), fused AdamW.

Tokens/s counts real (unpadded) tokens. On a GPU, bf16 autocast as in training.

    OMP_NUM_THREADS=1 python scripts/bench_train.py --data runs/prepared/mp_20-train --presets small --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from crystalformer.hardware import describe
from crystalformer.hardware import label as machine_label

PIPELINES = ("baseline", "fast")


def _index_batches(dataset, batch_size: int, steps: int, bucket: bool, seed: int) -> list[list[tuple[int, bool]]]:
    """The same ``steps * batch_size`` random examples for both pipelines; ``bucket`` groups them by length."""
    from crystalformer.datamodule import PromptSampler

    pairs = list(PromptSampler(dataset, shuffle=True, seed=seed))[:batch_size * steps]
    if bucket:  # what BucketBatchSampler does within one pool
        plain, prompted = dataset.stream_lengths()
        pairs.sort(key=lambda p: prompted[p[0]] if p[1] else plain[p[0]])
    return [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]


def _optimizer(model, fused: bool):
    params = list(model.parameters())
    if fused:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    return torch.optim.AdamW(params, lr=1e-4, foreach=True)


def run_pipeline(name: str, model, dataset, index_batches, device: str) -> tuple[float, int, int]:
    """Seconds for the whole pass, real tokens and crystals it trained on."""
    from crystalformer.model.batching import collate

    fast = name == "fast"
    grammar = None if fast else model.grammar
    optimizer = model._bench_optimizers[name]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else \
        torch.autocast("cpu", enabled=False)
    tokens = crystals = 0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for pairs in index_batches:
        batch = collate([dataset[p] for p in pairs], dataset.pad_id, grammar=grammar)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = model.loss(batch)
        loss.backward()
        optimizer.step()
        tokens += int(batch["mask"].sum())
        crystals += len(pairs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, tokens, crystals


def bench(preset: str, dataset, batch_size: int, steps: int, repeats: int, device: str) -> list[dict]:
    from crystalformer import ModelConfig
    from crystalformer.model import CrystalFormer

    tokenizer = dataset.parts[0].tokenizer
    config = ModelConfig.from_name(preset, vocab_size=tokenizer.vocab_size,
                                   max_len=max(512, int(max(dataset.stream_lengths()[1])) + 1))
    torch.manual_seed(0)
    model = CrystalFormer(config, tokenizer).to(device).train()
    model._bench_optimizers = {"baseline": _optimizer(model, fused=False),
                               "fast": _optimizer(model, fused=device != "mps")}
    plans = {name: _index_batches(dataset, batch_size, steps, bucket=name == "fast", seed=1) for name in PIPELINES}
    model.structural_masks()  # build the tables once, outside the timings
    for name in PIPELINES:  # warm-up
        run_pipeline(name, model, dataset, plans[name][:1], device)
    times = {name: [] for name in PIPELINES}
    counts = {}
    for _ in range(repeats):
        for name in PIPELINES:  # interleaved: the machine's drift hits both
            seconds, tokens, crystals = run_pipeline(name, model, dataset, plans[name], device)
            times[name].append(seconds)
            counts[name] = (tokens, crystals)
    rows = []
    for name in PIPELINES:
        median = statistics.median(times[name])
        tokens, crystals = counts[name]
        rows.append({"preset": preset, "pipeline": name, "device": device, "parameters": model.num_parameters(),
                     "batch_size": batch_size, "steps": len(plans[name]), "repeats": repeats,
                     "median_s": round(median, 3), "tokens_per_s": round(tokens / median, 1),
                     "crystals_per_s": round(crystals / median, 1), "times_s": [round(t, 3) for t in times[name]]})
    base = rows[0]
    for r in rows:
        r["speedup"] = round(r["crystals_per_s"] / base["crystals_per_s"], 2)
    return rows


def main(argv=None) -> int:
    from crystalformer.data import PrepareConfig, as_prepared, default_cache_dir
    from crystalformer.datamodule import CrystalDataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "tests" / "data" / "mp20_sample.csv",
                        help="prepared directory or CDVAE CSV (default: the test fixture)")
    parser.add_argument("--presets", nargs="+", default=["small"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=Path("bench_train.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dirs = as_prepared([args.data], default_cache_dir(), PrepareConfig(), progress=False)
    dataset = CrystalDataset(dirs, prompt_fraction=0.5, seed=0)
    rows = [r for p in args.presets for r in bench(p, dataset, args.batch_size, args.steps, args.repeats, args.device)]
    machine = machine_label(args.device)
    print(f"training throughput on {machine}, data {args.data} ({len(dataset)} crystals), batch {args.batch_size}, "
          f"median of {args.repeats} interleaved passes of {args.steps} steps (batch building included)")
    print(f"{'preset':8} {'pipeline':9} {'params':>10} {'tokens/s':>10} {'crystals/s':>11} {'speedup':>8}")
    for r in rows:
        print(f"{r['preset']:8} {r['pipeline']:9} {r['parameters']:>10,} {r['tokens_per_s']:>10,.0f} "
              f"{r['crystals_per_s']:>11,.1f} {r['speedup']:>7.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "hardware": describe(), "data": str(args.data),
                                     "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
