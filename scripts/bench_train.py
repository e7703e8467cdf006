"""Training throughput of the model presets: tokens/s and crystals/s per optimiser step.

Times forward + backward + AdamW step on real crystals (batches built once, grammar masks
included, so the figure is the model's cost), and separately the cost of building batches
(collate + grammar masks, the data loader's work). Median of ``--repeats`` runs of ``--steps``
steps each after one warm-up step. On a GPU, bf16 autocast as in training.

    python scripts/bench_train.py --data runs/prepared/mp_20-train --presets small base --json bench_train.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from crystalformer.hardware import label as machine_label


def _batches(dataset, batch_size: int, n: int, grammar):
    from crystalformer.datamodule import collate

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        idx = torch.randint(len(dataset), (batch_size,), generator=g).tolist()
        out.append(collate([dataset[i] for i in idx], dataset.pad_id, grammar=grammar))
    return out


def bench(preset: str, dataset, batch_size: int, steps: int, repeats: int, device: str) -> dict:
    from crystalformer import ModelConfig
    from crystalformer.model import CrystalFormer

    tokenizer = dataset.parts[0].tokenizer
    config = ModelConfig.from_name(preset, vocab_size=tokenizer.vocab_size)
    model = CrystalFormer(config, tokenizer).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t0 = time.perf_counter()
    batches = _batches(dataset, batch_size, steps, model.grammar)
    collate_s = (time.perf_counter() - t0) / steps
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu",
                                                                                                     enabled=False)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = model.loss(batch)
        loss.backward()
        optimizer.step()

    step(batches[0])  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for b in batches:
            step(b)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    tokens = sum(int(b["mask"].sum()) for b in batches)
    crystals = sum(b["ids"].shape[0] for b in batches)
    median = statistics.median(times)
    return {"preset": preset, "device": device, "parameters": model.num_parameters(), "batch_size": batch_size,
            "steps": steps, "repeats": repeats, "median_s": round(median, 3),
            "tokens_per_s": round(tokens / median, 1), "crystals_per_s": round(crystals / median, 1),
            "collate_crystals_per_s": round(batch_size / collate_s, 1)}


def main(argv=None) -> int:
    from crystalformer.data import PrepareConfig
    from crystalformer.datamodule import CrystalDataset, as_prepared, default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "tests" / "data" / "mp20_sample.csv",
                        help="prepared directory or CDVAE CSV (default: the test fixture)")
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=Path("bench_train.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dirs = as_prepared([args.data], default_cache_dir(), PrepareConfig(), progress=False)
    dataset = CrystalDataset(dirs, prompt_fraction=0.5, seed=0)
    rows = [bench(p, dataset, args.batch_size, args.steps, args.repeats, args.device) for p in args.presets]
    machine = machine_label(args.device)
    print(f"training throughput on {machine}, data {args.data} ({len(dataset)} crystals), "
          f"median of {args.repeats} x {args.steps} steps")
    print(f"{'preset':8} {'params':>10} {'batch':>6} {'tokens/s':>10} {'crystals/s':>11} {'collate cr/s':>13}")
    for r in rows:
        print(f"{r['preset']:8} {r['parameters']:>10,} {r['batch_size']:>6} {r['tokens_per_s']:>10,.0f} "
              f"{r['crystals_per_s']:>11,.1f} {r['collate_crystals_per_s']:>13,.1f}")
    args.json.write_text(json.dumps({"machine": machine, "data": str(args.data), "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
