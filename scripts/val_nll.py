"""Validation NLL of a model per data set, unconditional and given the composition.

    python scripts/val_nll.py --model runs/mp20/model --prepared runs/prepared/mp_20-val --json val_nll.json

Prints nats per crystal (total and by slot) for p(X) and p(X | composition) and writes JSON.
Reads the prepared token streams only: runs without pymatgen, spglib or pyxtal.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory or shipped name (default: the shipped default model)")
    parser.add_argument("--prepared", type=Path, nargs="+", required=True, help="prepared val directories")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path("val_nll.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from crystalformer import load_model
    from crystalformer.nll import nll_table

    model = load_model(args.model, device=args.device)
    table = nll_table(model, args.prepared)
    print(f"{'set':<24} {'given':<12} {'n':>6} {'NLL':>8}  by slot")
    for name, rows in table.items():
        for given, row in rows.items():
            slots = " ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("n", "nll", "nll_per_token"))
            print(f"{name:<24} {given:<12} {row['n']:>6} {row['nll']:>8.3f}  {slots}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"model": str(args.model or "default"), "nll": table}, indent=1) + "\n")
    os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
