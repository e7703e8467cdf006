"""Writing samples: one CIF per crystal plus ``samples.json``, all or nothing.

The folder is assembled under a temporary sibling and renamed into place at the end, so an
interrupted run leaves either the previous folder or the complete new one, never a mix. An
existing non-empty folder is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import sys
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
    if names is not None and (len(names) != len(samples) or len(set(names)) != len(names)):
        raise ValueError("names must be unique, one per sample")
    if extra is not None and len(extra) != len(samples):
        raise ValueError("extra needs one mapping per sample")
    with SampleWriter(out, overwrite, meta, p1) as writer:
        writer.add(samples, names, extra)
    return writer.counts


class SampleWriter:
    """Writes an output folder in parts, all or nothing: ``with SampleWriter(out) as w: w.add(batch) ...``.

    CIFs go into a temporary sibling folder as each part arrives, and their ``samples.json`` rows
    into a line file beside them, so memory stays bounded by one part whatever the total. On a
    clean exit ``samples.json`` is assembled and the folder renamed into place; on any failure
    (an exception, Ctrl-C, SIGTERM) the temporary folder is removed. ``meta`` may be updated
    before the block ends (e.g. with the wall time).
    """

    ROWS = ".rows.jsonl"

    def __init__(self, out, overwrite: bool = False, meta: dict | None = None, p1: bool = False):
        self.out = check_output_dir(out, overwrite)
        self.meta, self.p1 = dict(meta or {}), p1
        self.counts = {"written": 0, "not_decoded": 0, "not_built": 0, "invalid_structure": 0}
        self.n = 0
        self._names: set[str] = set()

    def __enter__(self) -> SampleWriter:
        self._context = assembled(self.out)
        self.tmp = self._context.__enter__()
        self._rows = open(self.tmp / self.ROWS, "w", encoding="utf-8")
        return self

    def add(self, samples, names: list[str] | None = None, extra: list[dict] | None = None) -> None:
        """Write one part: a CIF per built crystal and a row per sample (numbered on from earlier parts)."""
        from ..cif import crystal_cif

        names = names or [f"sample_{self.n + i:05d}" for i in range(len(samples))]
        if len(names) != len(samples) or self._names.intersection(names) or len(set(names)) != len(names):
            raise ValueError("names must be unique, one per sample")
        self._names.update(names)
        for k, (s, name) in enumerate(zip(samples, names)):
            structure, flags = structure_checks(s.crystal)
            row = {"index": self.n, "file": None, **s.summary(), **flags, **(extra[k] if extra else {})}
            if s.crystal is None:
                self.counts["not_decoded"] += 1
            elif structure is None:
                self.counts["not_built"] += 1
            else:
                (self.tmp / f"{name}.cif").write_text(crystal_cif(s.crystal, name, p1=self.p1), encoding="utf-8")
                row["file"] = f"{name}.cif"
                self.counts["written"] += 1
                self.counts["invalid_structure"] += int(not flags["valid_structure"])
            self._rows.write(json.dumps(row) + "\n")
            self.n += 1

    def _finish(self) -> None:
        self._rows.close()
        rows_path = self.tmp / self.ROWS
        with open(self.tmp / "samples.json", "w", encoding="utf-8") as fh, open(rows_path, encoding="utf-8") as rows:
            fh.write('{"meta": ' + json.dumps(self.meta) + ',\n "counts": ' + json.dumps(self.counts)
                     + ',\n "samples": [')
            for i, line in enumerate(rows):
                fh.write(("\n  " if i == 0 else ",\n  ") + line.rstrip("\n"))
            fh.write("\n ]\n}\n")
        rows_path.unlink()

    def __exit__(self, kind, error, trace) -> bool:
        try:
            if kind is None:
                self._finish()
            else:
                self._rows.close()
        except BaseException:
            self._context.__exit__(*sys.exc_info())
            raise
        return bool(self._context.__exit__(kind, error, trace))


def read_samples(path) -> list[dict]:
    """The per-sample rows of a ``samples.json`` (or of the one inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "samples.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["samples"] if isinstance(data, dict) else data
