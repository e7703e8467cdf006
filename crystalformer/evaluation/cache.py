"""On-disk cache of a reference set's per-structure analysis (fingerprints, space groups, reduced cells).

Fingerprinting a reference set (CrystalNN ~4 structures/s per core) dominates an evaluation;
its result depends only on the reference's content and a few settings, so it is stored once
and read back by every later evaluation against the same reference.

- **Where**: ``$CRYSTALFORMER_CACHE`` if set, else ``$XDG_CACHE_HOME/crystalformer/fingerprints``
  (``~/.cache/crystalformer/fingerprints`` by default); one ``reference-<sha256>.npz`` per key.
- **Key** (:func:`reference_key`): the sha256 of the reference's content (a file's bytes; a
  folder's sorted relative file names and bytes; for a ``samples.json`` or a list of entries,
  the entries themselves), the analysis asked for (fingerprint kinds, reduced cells, symprec),
  the subsample (``max_reference`` and its seed) and the versions of the packages that compute it.
  The path of the reference is not part of it: a copied file hits the same entry.
- **Format**: numpy ``.npz`` read with ``allow_pickle=False``: the fingerprints as float
  arrays, everything else (scalars, failures, reduced cells as pymatgen ``as_dict``) as one
  JSON document; the key is stored inside and checked on reading. Written to a temporary file
  and moved into place (``os.replace``), so a reader never sees half a file. A file that cannot
  be read or does not match is ignored: the analysis is recomputed and the file rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

# Bump when the per-structure analysis (crystalformer/evaluation/analysis.py) changes its results.
CACHE_FORMAT = 1
FINGERPRINT_KIND = "crystalnn-ops-site-mean+magpie-element-property-raw"
_VERSIONED = ("crystalformer", "pymatgen", "matminer", "smact", "spglib", "numpy")
_SCALARS = ("name", "material_id", "rank", "parsed", "struct_valid", "comp_valid", "valid", "density",
            "n_elements", "n_atoms", "space_group", "failures")
# what a damaged or foreign file raises on reading (anything else is a bug and propagates)
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError,
                zipfile.BadZipFile, zlib.error)


def default_cache_dir() -> Path:
    """``$CRYSTALFORMER_CACHE``, else ``$XDG_CACHE_HOME/crystalformer/fingerprints`` (``~/.cache/...``)."""
    env = os.environ.get("CRYSTALFORMER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crystalformer" / "fingerprints"


def cache_dir_of(cache: bool | str | os.PathLike | None) -> Path | None:
    """The folder ``cache`` names: True -> :func:`default_cache_dir`, False/None -> no cache, a path -> itself."""
    if cache is None or cache is False:
        return None
    return default_cache_dir() if cache is True else Path(cache)


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def path_sha256(path) -> str:
    """sha256 of a file's bytes, or of a folder's files (sorted relative names, sizes and bytes, recursive)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file or folder not found")
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(h, path)
        return h.hexdigest()
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    for p in files:
        h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\0".encode())
        _hash_file(h, p)
    return h.hexdigest()


def entries_sha256(entries) -> str:
    """sha256 of what the analysis reads from each :class:`~.analysis.Entry`, in order."""
    h = hashlib.sha256()
    for e in entries:
        h.update(json.dumps([e.name, e.cif, e.error, e.material_id, e.rank]).encode())
        h.update(b"\n")
    return h.hexdigest()


def is_samples_json(path: Path) -> bool:
    """True for inputs read through a samples.json, whose CIFs may lie outside the hashed path."""
    return (path.is_file() and path.suffix.lower() == ".json") or (path.is_dir() and (path / "samples.json").is_file())


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in _VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def reference_key(source_sha256: str, fingerprints: bool, reduced: bool, symprec: float,
                  max_reference: int | None, seed: int) -> dict:
    """Everything that decides a reference analysis (see the module docstring), as a JSON-ready dict."""
    return {"kind": "reference-analysis", "format": CACHE_FORMAT, "source_sha256": source_sha256,
            "fingerprints": FINGERPRINT_KIND if fingerprints else None, "reduced_cells": bool(reduced),
            "symprec": float(symprec), "max_reference": max_reference,
            "subsample_seed": None if max_reference is None else seed, "versions": _versions()}


def cache_file(folder: Path, key: dict) -> Path:
    """``folder/reference-<sha256 of the key>.npz``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(folder) / f"reference-{digest}.npz"


def _plain(value):
    """numpy scalars as Python ones (JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def _plain_array(value):
    """``json.dumps`` default: numpy values (a site property, say) as lists and Python scalars."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _stack(results: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array([i for i, r in enumerate(results) if r[name] is not None], dtype=np.int64)
    if not len(rows):
        return rows, np.zeros((0, 0))
    return rows, np.stack([np.asarray(results[i][name], dtype=np.float64) for i in rows])


def save_results(path: Path, key: dict, results: list[dict]) -> None:
    """Write ``results`` (from :func:`.analysis.analyze_all`; ``structure`` is left out) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: _plain(r[k]) for k in _SCALARS} for r in results]
    for row, r in zip(rows, results):
        row["reduced"] = None if r.get("reduced") is None else r["reduced"].as_dict()
    meta = json.dumps({"key": key, "rows": rows}, default=_plain_array).encode()
    arrays = {"meta": np.frombuffer(meta, dtype=np.uint8)}
    for name in ("struct_fp", "comp_fp"):
        arrays[f"{name}_rows"], arrays[name] = _stack(results, name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_results(path: Path, key: dict) -> list[dict] | None:
    """The results :func:`save_results` wrote under ``key``; None when the file is missing, damaged or another key's."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            fps = {name: (z[f"{name}_rows"], z[name]) for name in ("struct_fp", "comp_fp")}
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        return _rebuild(meta["rows"], fps)
    except _READ_ERRORS:  # missing (FileNotFoundError), truncated, damaged or foreign
        return None


def _rebuild(rows: list[dict], fps: dict) -> list[dict]:
    from pymatgen.core import Structure

    out = []
    for row in rows:
        r = {k: row[k] for k in _SCALARS}
        r.update(struct_fp=None, comp_fp=None, structure=None,
                 reduced=None if row["reduced"] is None else Structure.from_dict(row["reduced"]))
        out.append(r)
    for name, (index, values) in fps.items():
        if index.ndim != 1 or values.ndim != 2 or len(index) != len(values) or values.dtype != np.float64:
            raise ValueError(f"{name}: inconsistent arrays")
        for i, v in zip(index.tolist(), values):
            if not 0 <= i < len(out):
                raise IndexError(f"{name}: row {i} of {len(out)}")
            out[i][name] = v
    return out
