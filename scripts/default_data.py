"""Build the training and validation lists of the shipped default model.

The default model trains on every train split in ``../shared/data`` (perov_5, carbon_24,
mp_20 and mpts_52) and selects on their val splits. MP-20 and MPTS-52 share materials, so
MPTS-52 rows whose ``material_id`` appears in any MP-20 split (train or val) are dropped:
a crystal is never seen twice, and no MP-20 validation crystal leaks into training.

    python scripts/default_data.py --data ../shared/data --out runs/default-data

writes ``mpts_52-dedup.csv`` and ``inputs.json`` (the ``--data`` / ``--val`` lists for
``crystalformer train``) and prints the counts.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd


def build(data: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    mp_ids = set()
    for split in ("train", "val"):
        path = data / "mp_20" / f"{split}.csv"
        if path.exists():
            mp_ids |= set(pd.read_csv(path, usecols=["material_id"])["material_id"])
    mpts = pd.read_csv(data / "mpts_52" / "train.csv")
    keep = ~mpts["material_id"].isin(mp_ids)
    dedup = out / "mpts_52-dedup.csv"
    tmp = dedup.with_suffix(".csv.tmp")
    mpts[keep].to_csv(tmp, index=False)
    os.replace(tmp, dedup)

    train = [data / name / "train.csv" for name in ("perov_5", "carbon_24", "mp_20")] + [dedup]
    val = [p for p in (data / name / "val.csv" for name in ("perov_5", "carbon_24", "mp_20", "mpts_52"))
           if p.exists()]
    counts = {"mpts_52 train": int(len(mpts)), "mpts_52 kept": int(keep.sum()),
              "mpts_52 dropped (in mp_20)": int((~keep).sum())}
    for path in train + val:
        counts[str(path)] = int(len(pd.read_csv(path, usecols=["material_id"])))
    inputs = {"data": [str(p) for p in train], "val": [str(p) for p in val], "counts": counts}
    (out / "inputs.json").write_text(json.dumps(inputs, indent=2) + "\n")
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of the CDVAE data sets")
    parser.add_argument("--out", type=Path, default=Path("runs/default-data"))
    args = parser.parse_args()
    inputs = build(args.data, args.out)
    for name, n in inputs["counts"].items():
        print(f"{n:>8,}  {name}")
    print("train:", " ".join(f"--data {p}" for p in inputs["data"]))
    print("val:  ", " ".join(f"--val {p}" for p in inputs["val"]))


if __name__ == "__main__":
    main()
