"""A newcomer's first hour: the README's commands as a user runs them (no thread variables set).

    python scripts/bench_first_hour.py --reference data/mp_20/train.csv --json runs/first_hour.json

Each command runs in a fresh folder, in its own process, with OMP_NUM_THREADS / MKL_NUM_THREADS
removed from the environment, as a user who never heard of them would run it. For each: exit
code, wall time, and what the output says (crystals written, flags, whether textbook answers are
found). Prints a table and writes JSON. Timings are of this machine at this moment: the shared
development machines are noisy, so the table says which machine and how busy it was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crystalformer.textbook import TEXTBOOK


def commands(reference: Path | None, physics: bool) -> list[tuple[str, str]]:
    """(label, shell command) in the order a newcomer meets them in the README."""
    out = [
        ("help", "crystalformer --help"),
        ("sample", "crystalformer sample --n 16 --out samples/"),
        ("sample in a space group", "crystalformer sample --n 100 --space-group 221 --elements Sr,Ti,O --out samples_sg/"),
        ("csp SrTiO3", "crystalformer csp --composition SrTiO3 --n 20 --out csp/"),
        ("csp NaCl (primitive cell)", "crystalformer csp --composition NaCl --cell primitive --n 20 --out csp_nacl/"),
        ("infill", "crystalformer infill --template SrTiO3.cif --element Sr --allow Ca,Sr,Ba --out subs/"),
        ("design", 'crystalformer design --target "formation_energy_per_atom=-1.5+-0.1" --out designs/'),
    ]
    if reference is not None:
        out.append(("evaluate", f"crystalformer evaluate generation --samples samples/ --reference {reference} "
                                "--json eval/gen.json --no-report --max-reference 2000"))
    if physics:
        out.append(("csp LiFePO4 by energy", "crystalformer csp --composition LiFePO4 --rank energy --n 20 "
                                             "--out csp_e/"))
    return out


def _srtio3(folder: Path) -> None:
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])
    (folder / "SrTiO3.cif").write_text(s.to(fmt="cif"))


def _known_rank(folder: Path, formula: str) -> int | None:
    """1-based rank of the textbook structure of ``formula`` among the CIFs of a csp folder (None: absent)."""
    from crystalformer.evaluation.csp import csp_matcher
    from crystalformer.io import to_structure
    from crystalformer.textbook import textbook

    known = textbook(formula)
    matcher = csp_matcher()
    for rank, path in enumerate(sorted(folder.glob("rank_*.cif")), 1):  # 1-based, as a person counts
        if matcher.fit(to_structure(path), known.structure()):
            return rank
    return None


def run(label: str, command: str, cwd: Path, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        code, out, err = None, "", "timed out"
    wall = time.perf_counter() - t0
    row = {"command": command, "label": label, "exit": code, "wall_s": round(wall, 1)}
    notes = []
    checks = re.search(r"checks on (\d+) built: (.*)", out)
    if checks:
        notes.append(checks.group(0).split(";")[0])
    written = re.search(r"(\d+) (CIFs|crystals as [a-z, ]+) in", out)
    if written:
        row["written"] = int(written.group(1))
    meets = re.search(r"\((\d+) meet ([^)]*)\)", out)
    if meets:
        notes.append(f"{meets.group(1)} meet {meets.group(2)}")
    formula = command.split("--composition ")[1].split()[0] if "--composition " in command else None
    if code == 0 and formula in {t.formula for t in TEXTBOOK}:
        folder = cwd / command.split("--out ")[1].split()[0]
        rank = _known_rank(folder, formula)
        notes.append(f"textbook structure at rank {rank}" if rank is not None else
                     f"textbook structure not among the {row.get('written', '?')} written")
    if code not in (0, None):
        notes.append(err.strip().splitlines()[-1][:160] if err.strip() else "no message")
    row["notes"] = "; ".join(notes)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, help="CDVAE CSV for the evaluate command (e.g. data/mp_20/train.csv)")
    p.add_argument("--physics", action="store_true", help="also run csp --rank energy (needs the physics extra)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", type=Path, default=Path("first_hour.json"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="first-hour-") as tmp:
        cwd = Path(tmp)
        _srtio3(cwd)
        reference = args.reference.resolve() if args.reference else None
        for label, command in commands(reference, args.physics):
            rows.append(run(label, command, cwd, args.timeout))
            r = rows[-1]
            print(f"{r['label']:<26} exit {r['exit']!s:>4} {r['wall_s']:>7.1f} s  {r['notes']}", flush=True)
    load = os.getloadavg()
    report = {"machine": {"node": os.uname().nodename, "cpus": os.cpu_count(), "load_avg_1_5_15": load},
              "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
          f"report written to {args.json}")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
