"""CIF writing, old path against new, interleaved: pymatgen's CifWriter(symprec=0.01) on the expanded
structure (spglib rediscovers the symmetry) against crystalformer.cif.crystal_cif (the crystal's own
space group, operations and Wyckoff sites). Prints CIFs/s, median of ``--repeats``.

    OMP_NUM_THREADS=1 python scripts/bench_cif.py --csv tests/data/mp20_sample.csv tests/data/perov5_sample.csv
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path


def main(argv=None) -> int:
    from pymatgen.io.cif import CifWriter

    from crystalformer.cif import crystal_cif
    from crystalformer.crystal import Crystal
    from crystalformer.errors import CrystalError
    from crystalformer.hardware import label
    from crystalformer.io import read_csv_records, structure_from_cif

    data = Path(__file__).resolve().parents[1] / "tests" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, nargs="+", default=sorted(data.glob("*_sample.csv")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("bench_cif.json"))
    args = parser.parse_args(argv)
    crystals, skipped = [], 0
    warnings.simplefilter("ignore")
    for path in args.csv:
        for rec in read_csv_records(path):
            try:
                crystals.append(Crystal.from_structure(structure_from_cif(rec.cif, rec.material_id)))
            except (CrystalError, ValueError):
                skipped += 1
    structures = [c.to_structure() for c in crystals]
    old, new = [], []
    for _ in range(args.repeats):  # interleaved: the machine's drift hits both
        t = time.perf_counter()
        for s in structures:
            try:
                str(CifWriter(s, symprec=0.01))
            except (ValueError, TypeError, RuntimeError):
                str(CifWriter(s))
        old.append(len(structures) / (time.perf_counter() - t))
        t = time.perf_counter()
        for i, c in enumerate(crystals):
            crystal_cif(c, f"sample_{i:05d}")
        new.append(len(crystals) / (time.perf_counter() - t))
    row = {"machine": label(), "crystals": len(crystals), "skipped": skipped, "repeats": args.repeats,
           "cifwriter_per_s": round(statistics.median(old), 1), "crystal_cif_per_s": round(statistics.median(new), 1)}
    row["ratio"] = round(row["crystal_cif_per_s"] / row["cifwriter_per_s"], 1)
    print(f"{row['crystals']} crystals ({skipped} skipped) on {row['machine']}, median of {args.repeats}: "
          f"CifWriter(symprec=0.01) {row['cifwriter_per_s']:,.0f} CIFs/s, crystal_cif {row['crystal_cif_per_s']:,.0f} "
          f"CIFs/s ({row['ratio']:.0f}x)")
    args.json.write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
