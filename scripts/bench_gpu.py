"""One-command GPU sampling benchmark: decoding throughput of the shipped model and the ``base`` preset.

Runs where only torch, numpy, safetensors and tokenizers are installed (no pymatgen, spglib or
pyxtal): it times batched KV-cached decoding (bf16 autocast on CUDA, as the sampler always
does there) at each batch size, and, when the crystal stack is importable, also tokens ->
Crystal and Crystal -> CIF text (the writer every command uses). Each batch size gets one
warm-up call and then --repeats timed calls (median). Batch sizes that would start after
--budget-s seconds are skipped and listed, so the whole run stays inside its time limit.
Writes ``bench_gpu.json`` into the folder given by --out and prints a table.

    python scripts/bench_gpu.py --out $OUT                      # on the GPU machine
    python scripts/bench_gpu.py --out /tmp/b --device cpu --batches 8 --presets tiny   # CPU check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CRYSTAL_STACK = ("pymatgen", "spglib")


def crystal_stack_available() -> bool:
    try:
        return all(importlib.util.find_spec(name) is not None for name in CRYSTAL_STACK)
    except ImportError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decode(model, batch: int, repeats: int, seed: int = 0) -> tuple[list[float], list]:
    """Seconds of each timed ``sample`` call (after one warm-up) and the last call's samples."""
    from crystalformer.sampling.api import sample

    sample(model, min(batch, 64), batch_size=min(batch, 64), seed=seed)  # warm-up: kernels, allocator
    times, result = [], None
    for r in range(repeats):
        _sync(model.device)
        t = time.perf_counter()
        result = sample(model, batch, batch_size=batch, seed=seed + 1 + r)
        _sync(model.device)
        times.append(time.perf_counter() - t)
    return times, result.samples


def time_outputs(model, samples) -> dict:
    """Seconds to build Crystals from the streams and to write their CIF text (crystal stack only)."""
    from crystalformer.cif import crystal_cif

    t = time.perf_counter()
    crystals = []
    for s in samples:
        try:
            crystals.append(model.tokenizer.decode(s.ids, s.values))
        except (ValueError, ArithmeticError):  # CrystalError is a ValueError
            continue
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    for i, crystal in enumerate(crystals):
        crystal_cif(crystal, f"sample_{i:05d}")
    return {"built": len(crystals), "build_s": t_build, "cif_s": time.perf_counter() - t}


def run(models: list[tuple[str, object]], batches: list[int], repeats: int, budget_s: float,
        with_outputs: bool) -> tuple[list[dict], list[str]]:
    rows, skipped, start = [], [], time.perf_counter()
    for label, model in models:
        for batch in batches:
            if time.perf_counter() - start > budget_s:
                skipped.append(f"{label} batch {batch}")
                continue
            times, samples = time_decode(model, batch, repeats)
            d = statistics.median(times)
            row = {"model": label, "parameters": model.num_parameters(), "batch": batch, "repeats": repeats,
                   "decode_s": round(d, 4), "decode_crystals_per_s": round(batch / d, 1),
                   "mean_tokens": round(sum(len(s.ids) for s in samples) / len(samples), 1)}
            if with_outputs:
                out = time_outputs(model, samples)
                row.update(built=out["built"], build_per_s=round(out["built"] / max(out["build_s"], 1e-9), 1),
                           cif_per_s=round(out["built"] / max(out["cif_s"], 1e-9), 1),
                           end_to_end_crystals_per_s=round(batch / (d + out["build_s"] + out["cif_s"]), 1))
            rows.append(row)
            print(_line(row), flush=True)
    return rows, skipped


def _line(r: dict) -> str:
    extra = (f" {r['build_per_s']:>10,.0f} {r['cif_per_s']:>10,.0f} {r['end_to_end_crystals_per_s']:>11,.0f}"
             if "cif_per_s" in r else f" {'-':>10} {'-':>10} {'-':>11}")
    return f"{r['model'][:24]:24} {r['batch']:>6} {r['mean_tokens']:>7} {r['decode_crystals_per_s']:>10,.0f}{extra}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json (created)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    parser.add_argument("--presets", nargs="*", default=["base"], help="randomly initialised presets to time too")
    parser.add_argument("--model", type=Path, default=ROOT / "crystalformer" / "_default" / "model",
                        help="trained model directory ('' to skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no batch after this many seconds")
    args = parser.parse_args(argv)

    from crystalformer import CrystalTokenizer, ModelConfig
    from crystalformer.hardware import label as machine_label
    from crystalformer.model import CrystalFormer, load_model

    device = torch.device(args.device)
    models = []
    if str(args.model):
        models.append(("shipped model", load_model(args.model).to(device).eval()))
    for preset in args.presets:
        torch.manual_seed(0)
        models.append((f"{preset} (random)", CrystalFormer(ModelConfig.from_name(preset), CrystalTokenizer())
                       .to(device).eval()))
    with_outputs = crystal_stack_available()
    machine = machine_label(args.device)
    print(f"sampling on {machine}; bf16 autocast: {device.type == 'cuda'}; crystal stack: {with_outputs}")
    print(f"{'model':24} {'batch':>6} {'tokens':>7} {'decode/s':>10} {'build/s':>10} {'CIF/s':>10} {'end-to-end':>11}")
    rows, skipped = run(models, args.batches, args.repeats, args.budget_s, with_outputs)
    if skipped:
        print(f"skipped (time budget {args.budget_s:.0f} s): {', '.join(skipped)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_gpu.json").write_text(json.dumps(
        {"machine": machine, "device": str(device), "bf16": device.type == "cuda", "crystal_stack": with_outputs,
         "results": rows, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
