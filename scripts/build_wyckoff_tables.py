"""Generate ``wyckoff_tables/wyckoff.json`` from pyxtal's Wyckoff tables.

Run once by a developer (the JSON is committed; the package never needs pyxtal to read it):

    python scripts/build_wyckoff_tables.py --out wyckoff_tables/wyckoff.json

The format is documented in ``wyckoff_tables/README.md``. Everything is in the
conventional cell of the setting pyxtal uses (ITA standard: unique axis b, cell
choice 1, origin choice 2 where a group has two, hexagonal axes for R groups); the
matching spglib Hall number is stored per group so that symmetry analysis lands in
exactly the same setting.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

CRYSTAL_SYSTEMS = (
    (2, "triclinic"),
    (15, "monoclinic"),
    (74, "orthorhombic"),
    (142, "tetragonal"),
    (167, "trigonal"),
    (194, "hexagonal"),
    (230, "cubic"),
)


def crystal_system(number: int) -> str:
    for last, name in CRYSTAL_SYSTEMS:
        if number <= last:
            return name
    raise ValueError(f"space group {number=} is not in 1..230")


def _exact(value: float) -> float:
    """Snap a table entry to the nearest fraction with denominator <= 24 (all ITA entries are)."""
    frac = Fraction(value).limit_denominator(24)
    if abs(float(frac) - value) > 1e-9:
        raise ValueError(f"table entry {value!r} is not a small fraction")
    return float(frac)


def _affine(op) -> list[list[float]]:
    """3x4 affine matrix [R | t] of a pymatgen SymmOp, entries snapped to exact fractions."""
    m = op.affine_matrix[:3, :4]
    return [[_exact(float(v)) for v in row] for row in m]


def _position_record(wp, index: int) -> dict:
    wp.get_site_symmetry()  # pyxtal fills ``site_symm`` lazily
    ops = wp.ops
    first = np.asarray(_affine(ops[0]))
    rot, trans = first[:, :3], first[:, 3]
    free_axes = [j for j in range(3) if np.any(rot[:, j] != 0)]
    if len(free_axes) != wp.get_dof() or np.linalg.matrix_rank(rot) != len(free_axes):
        raise ValueError(f"{wp.number}{wp.letter}: first op {ops[0].as_xyz_str()} has an unexpected form")
    # Row in which each free parameter stands alone with coefficient +-1 ("pivot"):
    # reading the parameter back from a point uses it.
    pivots = []
    for j in free_axes:
        rows = [i for i in range(3) if abs(rot[i, j]) == 1 and np.count_nonzero(rot[i]) == 1]
        if not rows:
            raise ValueError(f"{wp.number}{wp.letter}: free axis {j} has no pivot row")
        pivots.append(rows[0])
    free_to_point = np.concatenate([rot[:, free_axes], trans[:, None]], axis=1)
    return {
        "letter": wp.letter,
        "index": index,
        "multiplicity": int(wp.multiplicity),
        "site_symmetry": str(wp.site_symm),
        "dof": len(free_axes),
        "free_axes": free_axes,
        "pivot_rows": pivots,
        "free_to_point": free_to_point.tolist(),
        "ops": [op.as_xyz_str().replace(" ", "") for op in ops],
        "matrices": [_affine(op) for op in ops],
    }


def build_tables() -> dict:
    import pyxtal
    from pyxtal.symmetry import Group

    groups = {}
    n_positions = 0
    for number in range(1, 231):
        g = Group(number)
        positions = list(reversed(g.Wyckoff_positions))  # pyxtal lists the general position first
        records = [_position_record(wp, i) for i, wp in enumerate(positions)]
        n_positions += len(records)
        groups[str(number)] = {
            "number": number,
            "symbol": g.symbol,
            "hall_number": int(g.hall_number),
            "crystal_system": crystal_system(number),
            "centering": g.symbol[0],
            "order": records[-1]["multiplicity"],
            "wyckoff": records,
        }
    return {
        "format_version": 1,
        "source": f"pyxtal {pyxtal.__version__}",
        "n_space_groups": len(groups),
        "n_positions": n_positions,
        "space_groups": groups,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("wyckoff_tables/wyckoff.json"))
    args = parser.parse_args(argv)
    tables = build_tables()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(tables, separators=(",", ":")))
    tmp.replace(args.out)
    print(f"wrote {args.out}: {tables['n_space_groups']} space groups, {tables['n_positions']} Wyckoff positions")


if __name__ == "__main__":
    main()
