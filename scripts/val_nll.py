"""Validation NLL of a model per data set, unconditional and given the composition.

    python scripts/val_nll.py --prepared runs/prepared/perov_5-val runs/prepared/carbon_24-val \\
        runs/prepared/mp_20-val --json val_nll.json

Prints nats per crystal (total and by slot) for p(X) and p(X | composition) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    parser.add_argument("--prepared", type=Path, nargs="+", required=True, help="prepared val directories")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("val_nll.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from crystalformer import load_model
    from crystalformer.crystal import Crystal

    model = load_model(args.model)
    out = {}
    print(f"{'set':<24} {'given':<12} {'n':>6} {'NLL':>8}  by slot")
    for path in args.prepared:
        with open(path / "crystals.jsonl", encoding="utf-8") as f:
            crystals = [Crystal.from_text(json.loads(line)["text"]) for line in f]
        for with_composition in (False, True):
            lp = model.log_prob(crystals, with_composition=with_composition)
            row = {"n": len(crystals), "nll": -float(lp.total.mean())}
            row.update({k: -float(v.mean()) for k, v in lp.by_slot.items()})
            key = f"{path.name}{' | composition' if with_composition else ''}"
            out[key] = row
            slots = " ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("n", "nll"))
            print(f"{path.name:<24} {'composition' if with_composition else '-':<12} {len(crystals):>6} "
                  f"{row['nll']:>8.3f}  {slots}")
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
