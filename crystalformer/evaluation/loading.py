"""Reading samples, predictions and reference sets into :class:`~.analysis.Entry` lists.

Accepted inputs:
- a folder written by ``crystalformer sample`` / ``crystalformer csp``: ``*.cif`` files plus an
  optional ``samples.json`` (a list of rows, or ``{"samples": [...]}``); rows whose ``file`` is
  null are samples the generator failed to produce and count as invalid;
- a ``samples.json`` file (CIF paths relative to its folder);
- a CDVAE-format CSV (``cif`` column; ``material_id`` and optional ``rank`` columns);
- a single CIF file.
"""

from __future__ import annotations

import re
from pathlib import Path

from .analysis import Entry

_RANKED_NAME = re.compile(r"^(?P<mid>.+)_(?P<rank>\d+)$")  # mp-1234_0 -> ("mp-1234", 0)


def load_entries(path) -> list[Entry]:
    """Entries of a samples folder, samples.json, CSV or CIF file (see module docstring)."""
    from ..io import is_csv, read_cif_records

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file or folder not found")
    if path.is_dir() and (path / "samples.json").is_file():
        return _from_samples_json(path / "samples.json")
    if path.is_file() and path.suffix.lower() == ".json":
        return _from_samples_json(path)
    if path.is_file() and is_csv(path):
        return _from_csv(path)
    if path.is_dir() or path.suffix.lower() == ".cif":
        entries = []
        for r in read_cif_records(path):
            m = _RANKED_NAME.match(r.material_id)
            entries.append(Entry(r.material_id, r.cif, material_id=m["mid"] if m else r.material_id,
                                 rank=int(m["rank"]) if m else None))
        return entries
    raise ValueError(f"{path}: expected a folder of CIF files, a samples.json, a .csv or a .cif file")


def _from_csv(path: Path) -> list[Entry]:
    from ..io import read_csv_records

    entries = []
    for r in read_csv_records(path):
        rank = r.properties.get("rank")
        entries.append(Entry(f"{r.material_id}" if rank is None else f"{r.material_id}_{int(rank)}",
                             r.cif or None, None if r.cif else f"row {r.row}: empty cif",
                             material_id=r.material_id, rank=None if rank is None else int(rank)))
    return entries


def _from_samples_json(path: Path) -> list[Entry]:
    from ..samples_file import read_samples_file

    rows = read_samples_file(path).rows
    entries = []
    for i, row in enumerate(rows):
        if "file" not in row:
            raise ValueError(f"{path}: row {i} has no 'file' key")
        mid = None if row.get("material_id") is None else str(row["material_id"])
        rank = None if row.get("rank") is None else int(row["rank"])
        name = Path(str(row["file"])).stem if row["file"] else f"row{i}"
        if not row["file"]:
            entries.append(Entry(name, None, str(row.get("error") or row.get("filtered") or "not generated"), mid, rank))
            continue
        f = path.parent / row["file"]
        if not f.is_file():
            raise FileNotFoundError(f"{path}: row {i} names {row['file']}, which is not in {path.parent}")
        entries.append(Entry(name, _cif_text(f), None, mid, rank))
    return entries


def _cif_text(path: Path) -> str:
    """A structure file's CIF text: CIFs as they are, POSCAR / extended XYZ (``--format``) converted."""
    if path.suffix.lower() == ".cif":
        return path.read_text(errors="replace")
    from pymatgen.io.cif import CifWriter

    from ..io import to_structure

    return str(CifWriter(to_structure(path)))


def group_predictions(entries: list[Entry]) -> dict[str, list[Entry]]:
    """Predictions per material_id, sorted by rank (missing ranks: order of appearance)."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if e.material_id is None:
            raise ValueError(f"prediction {e.name!r} has no material_id; name files <material_id>_<rank>.cif "
                             "or give a material_id column / samples.json key")
        groups.setdefault(e.material_id, []).append(e)
    for mid, preds in groups.items():
        ranks = [p.rank for p in preds]
        if all(r is not None for r in ranks):
            if len(set(ranks)) != len(ranks):
                raise ValueError(f"material_id {mid!r} has duplicate prediction ranks {sorted(ranks)}")
            preds.sort(key=lambda p: p.rank)
    return groups


def subsample(entries: list, k: int | None, seed: int = 0) -> list:
    """At most ``k`` entries, drawn without replacement with a fixed seed, original order kept."""
    if k is None or len(entries) <= k:
        return list(entries)
    from .distributions import choose_subset

    return [entries[i] for i in choose_subset(len(entries), k, seed)]
