"""``samples.json``, the one record every command writes next to its structure files.

``{"meta": {...}, "counts": {...}, "samples": [row, ...], ...}``: ``meta`` says how the folder
was made (command, model, seed, settings), ``counts`` what happened to the crystals, and each
row describes one crystal (``file`` names its structure file, or is null with the reason in
``error`` / ``filtered``). Commands may add top-level keys (``skipped``). A bare list of rows is
read too. One reader and one writer serve sample, csp, infill, design, refine, relax and
evaluate, so the layout cannot drift between them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

NAME = "samples.json"


@dataclass
class SamplesFile:
    path: Path
    meta: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # any other top-level keys (e.g. "skipped")


def samples_path(path) -> Path:
    """The ``samples.json`` a path names: the file itself, or the one inside a folder."""
    path = Path(path)
    return path if path.suffix.lower() == ".json" else path / NAME


def read_samples_file(path) -> SamplesFile:
    """Read and check a ``samples.json`` (or the one in a folder); one-line ``ValueError`` naming the file."""
    f = samples_path(path)
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no samples.json there")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{f}: not valid JSON ({err})") from None
    if isinstance(data, list):
        data = {"samples": data}
    rows = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{f}: expected a list of sample rows (or {{'samples': [...]}})")
    meta, counts = data.get("meta") or {}, data.get("counts") or {}
    if not isinstance(meta, dict) or not isinstance(counts, dict):
        raise ValueError(f"{f}: 'meta' and 'counts' must be JSON objects")
    extra = {k: v for k, v in data.items() if k not in ("meta", "counts", "samples")}
    return SamplesFile(f, meta, counts, rows, extra)


def write_samples_file(folder, meta: dict, counts: dict, rows: Iterable[dict], **extra) -> Path:
    """Write ``folder/samples.json`` (the folder is one being assembled: see :mod:`crystalformer.atomic`)."""
    return write_samples_lines(folder, meta, counts, (json.dumps(r, default=str) for r in rows), **extra)


def write_samples_lines(folder, meta: dict, counts: dict, row_lines: Iterable[str], **extra) -> Path:
    """:func:`write_samples_file` from rows already serialized one per line (streamed: any number of rows)."""
    f = Path(folder) / NAME
    with open(f, "w", encoding="utf-8") as fh:
        fh.write('{"meta": ' + json.dumps(meta, default=str) + ',\n "counts": ' + json.dumps(counts) + ',\n "samples": [')
        for i, line in enumerate(row_lines):
            fh.write(("\n  " if i == 0 else ",\n  ") + line.rstrip("\n"))
        fh.write("\n ]")
        for key, value in extra.items():
            fh.write(f',\n {json.dumps(key)}: ' + json.dumps(value, default=str))
        fh.write("\n}\n")
    return f
