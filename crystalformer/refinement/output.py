"""Refinement input (a CIF folder / file or a ``samples.json``) and output (CIFs + ``samples.json``).

The output folder is assembled under a temporary sibling and moved into place with
``os.replace``: an interrupted run leaves the previous folder or the complete new one.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import assembled
from ..crystal import Crystal
from ..samples_file import read_samples_file, samples_path, write_samples_file


def read_inputs(path) -> tuple[list[str], list[Crystal], list[dict]]:
    """(names, crystals, skipped rows with reasons) from a samples.json, a folder holding one, or CIFs."""
    from ..errors import CrystalError
    from ..io import read_cif_records, structure_from_cif

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"refine input {path}: file or folder not found")
    names, crystals, skipped = [], [], []
    if samples_path(path).is_file():
        for i, row in enumerate(read_samples_file(path).rows):
            name = Path(row.get("file") or f"sample_{i:05d}").stem
            if not row.get("text"):
                skipped.append({"name": name, "reason": row.get("error") or "no crystal text in samples.json"})
                continue
            names.append(name)
            crystals.append(Crystal.from_text(row["text"]))
        return names, crystals, skipped
    for rec in read_cif_records(path):
        name = rec.material_id or f"{Path(rec.source).stem}_{rec.row}"
        try:
            crystals.append(Crystal.from_structure(structure_from_cif(rec.cif, name)))
            names.append(name)
        except (CrystalError, ValueError) as err:
            skipped.append({"name": name, "reason": str(err)})
    if not crystals and not skipped:
        raise ValueError(f"refine input {path}: no samples.json and no CIF files")
    return names, crystals, skipped


def write_refined(out, names: list[str], before: list[Crystal], after: list[Crystal], overwrite: bool = False,
                  meta: dict | None = None, skipped: list[dict] | None = None) -> dict:
    """One CIF per refined crystal and a samples.json (text forms, min distances before/after)."""
    from ..cif import crystal_cif
    from ..sampling.output import check_output_dir, structure_checks

    out = check_output_dir(out, overwrite)
    with assembled(out) as tmp:
        rows, counts = [], {"refined": 0, "valid_before": 0, "valid_after": 0, "skipped": len(skipped or [])}
        used: set[str] = set()
        for name, b, a in zip(names, before, after):
            stem = name if name not in used else f"{name}_{len(used)}"
            used.add(stem)
            _, fb = structure_checks(b)
            _, fa = structure_checks(a)
            (tmp / f"{stem}.cif").write_text(crystal_cif(a, stem), encoding="utf-8")
            counts["refined"] += 1
            counts["valid_before"] += int(fb["valid_structure"])
            counts["valid_after"] += int(fa["valid_structure"])
            rows.append({"file": f"{stem}.cif", "space_group": a.space_group, "formula": a.formula,
                         "num_atoms": a.num_atoms, "wyckoff": a.wyckoff_sequence, "text": a.to_text(),
                         "text_before": b.to_text(), "min_distance_before": fb["min_distance"],
                         "min_distance": fa["min_distance"], "valid_structure": fa["valid_structure"]})
        write_samples_file(tmp, meta or {}, counts, rows, skipped=skipped or [])
        return counts
