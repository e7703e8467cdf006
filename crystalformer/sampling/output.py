"""Writing samples: one CIF per crystal plus ``samples.json``, all or nothing.

The folder is assembled under a temporary sibling and renamed into place at the end, so an
interrupted run leaves either the previous folder or the complete new one, never a mix. An
existing non-empty folder is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import assembled, check_output_folder

MIN_DISTANCE = 0.5  # Å, the CDVAE structural-validity cut-off
MIN_VOLUME = 0.1  # Å^3


check_output_dir = check_output_folder  # ``out`` checked and claimed for writing


def structure_checks(crystal) -> tuple[object | None, dict]:
    """(pymatgen Structure or None, flags): built, structurally valid (distances >= 0.5 Å, volume >= 0.1 Å^3)."""
    flags = {"built": False, "valid_structure": False, "min_distance": None}
    if crystal is None:
        return None, flags
    try:
        structure = crystal.to_structure()
    except (ValueError, ArithmeticError) as err:
        flags["error"] = f"structure: {err}"
        return None, flags
    flags["built"] = True
    if len(structure) > 1:
        d = structure.distance_matrix
        dmin = float(np.min(d[np.triu_indices(len(structure), 1)]))
    else:  # one atom: its nearest neighbour is its own image at the shortest lattice vector
        dmin = float(min(structure.lattice.abc))
    flags["min_distance"] = round(dmin, 4)
    flags["valid_structure"] = bool(dmin >= MIN_DISTANCE and structure.volume >= MIN_VOLUME)
    return structure, flags


def write_samples(samples, out, overwrite: bool = False, names: list[str] | None = None,
                  extra: list[dict] | None = None, meta: dict | None = None, p1: bool = False) -> dict:
    """Write ``samples`` (:class:`~crystalformer.sampling.api.Sample`) into folder ``out``.

    ``names``: file stems (default ``sample_00000`` ...); ``extra``: per-sample fields added to
    ``samples.json`` (e.g. material_id and rank for CSP). Samples without a crystal are listed
    with their error and get no CIF. Each CIF carries the crystal's own space group, operations
    and Wyckoff sites (:func:`crystalformer.cif.crystal_cif`); ``p1`` writes every atom in P1.
    Returns counts by outcome.
    """
    names = names or [f"sample_{i:05d}" for i in range(len(samples))]
    if len(names) != len(samples) or len(set(names)) != len(names):
        raise ValueError("names must be unique, one per sample")
    out = check_output_dir(out, overwrite)
    with assembled(out) as tmp:
        return _write_samples(samples, tmp, names, extra, meta, p1)


def _write_samples(samples, tmp: Path, names, extra, meta, p1) -> dict:
    from ..cif import crystal_cif

    rows, counts = [], {"written": 0, "not_decoded": 0, "not_built": 0, "invalid_structure": 0}
    for i, (s, name) in enumerate(zip(samples, names)):
        structure, flags = structure_checks(s.crystal)
        row = {"index": i, "file": None, **s.summary(), **flags, **((extra or [{}] * len(samples))[i])}
        if s.crystal is None:
            counts["not_decoded"] += 1
        elif structure is None:
            counts["not_built"] += 1
        else:
            (tmp / f"{name}.cif").write_text(crystal_cif(s.crystal, name, p1=p1), encoding="utf-8")
            row["file"] = f"{name}.cif"
            counts["written"] += 1
            counts["invalid_structure"] += int(not flags["valid_structure"])
        rows.append(row)
    payload = {"meta": meta or {}, "counts": counts, "samples": rows}
    (tmp / "samples.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return counts


def read_samples(path) -> list[dict]:
    """The per-sample rows of a ``samples.json`` (or of the one inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "samples.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["samples"] if isinstance(data, dict) else data
