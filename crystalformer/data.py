"""Data preparation (parallel, cached) and batching of token streams.

``prepare`` turns CSV files / CIF folders into a *prepared directory*::

    tokens.safetensors   flat token tensors of the kept crystals (+ offsets), see below
    crystals.jsonl       one line per kept crystal: source, row, material_id, text form, properties
    skipped.jsonl        one line per skipped input: source, row, material_id, reason, message
    meta.json            format version, sources with sha256, settings, counts, vocabulary, n_max

Tensors in ``tokens.safetensors`` (n crystals, no pickle anywhere):
``ids`` / ``values`` / ``slots`` (flat, crystal i at ``offsets[i]:offsets[i+1]``, streams
without the composition prompt), ``prompt_ids`` / ``prompt_slots`` (flat, ``prompt_offsets``:
the ``[COMP] .. [/COMP]`` tokens of each crystal, inserted after ``[BOS]`` at batching time),
``num_atoms`` (conventional cell).

The directory is written to a temporary sibling and renamed at the end, so a prepared
directory is either complete or absent. It is reused when the sources' hashes and the
settings are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .grammar import DEFAULT_N_MAX

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of ``prepare``; all but ``workers`` and ``chunk_size`` are part of the cache key."""

    symprec: float = 0.01
    """spglib distance tolerance in Å: 0.01 is strict (CrystalFormer); 0.1 as Materials Project."""
    angle_tolerance: float = 5.0
    """spglib angle tolerance in degrees."""
    n_max: int = DEFAULT_N_MAX
    """Most symmetry-distinct sites a crystal may have; larger ones are skipped as too_many_sites."""
    workers: int = 1
    """Processes for the symmetry analysis (1 = in this process)."""
    chunk_size: int = 32
    """Records per task sent to a worker process."""

    def __post_init__(self):
        if not 0 < self.symprec < 1:
            raise ValueError(f"symprec must be in (0, 1) Å, got {self.symprec}")
        if not 0 <= self.angle_tolerance < 30 and self.angle_tolerance != -1:
            raise ValueError(f"angle_tolerance must be in [0, 30) degrees (or -1 for spglib's default), "
                             f"got {self.angle_tolerance}")
        if self.n_max < 1:
            raise ValueError(f"n_max must be >= 1, got {self.n_max}")
        if self.workers < 1 or self.chunk_size < 1:
            raise ValueError(f"workers and chunk_size must be >= 1, got {self.workers}, {self.chunk_size}")

    def cache_settings(self) -> dict:
        return {"symprec": self.symprec, "angle_tolerance": self.angle_tolerance, "n_max": self.n_max}


@dataclass
class PrepareSummary:
    """What ``prepare`` did."""

    out_dir: Path
    total: int
    kept: int
    skipped: dict[str, int] = field(default_factory=dict)
    reused: bool = False
    elapsed_s: float = 0.0

    def table(self) -> str:
        rows = [("output", str(self.out_dir)), ("cache", "reused" if self.reused else "built"),
                ("structures", str(self.total)), ("kept", str(self.kept))]
        rows += [(f"skipped: {reason}", str(n)) for reason, n in sorted(self.skipped.items())]
        rows.append(("elapsed", f"{self.elapsed_s:.1f} s"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_files(inputs) -> list[Path]:
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.cif"))
            if not found:
                raise FileNotFoundError(f"no *.cif files in folder {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return files


def _fingerprint(inputs, config: PrepareConfig) -> dict:
    from . import __version__
    from .tokenizer import CrystalTokenizer

    return {
        "format_version": FORMAT_VERSION,
        "sources": [{"path": str(f), "sha256": file_sha256(f)} for f in _source_files(inputs)],
        "settings": config.cache_settings(),
        "vocab_size": CrystalTokenizer().vocab_size,
        "package_version": __version__,
    }


def _cache_matches(out_dir: Path, fingerprint: dict) -> bool:
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file() or not (out_dir / "tokens.safetensors").is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    return all(meta.get(k) == v for k, v in fingerprint.items() if k != "sources") and \
        [s["sha256"] for s in meta.get("sources", [])] == [s["sha256"] for s in fingerprint["sources"]]


# ---------------------------------------------------------------------- the per-record work
def _process(record, settings: dict) -> dict:
    """Analyse one record; returns a kept entry or a skipped entry (never raises for bad input)."""
    from .crystal import Crystal
    from .errors import CrystalError
    from .io import structure_from_cif

    where = {"source": record.source, "row": record.row, "material_id": record.material_id}
    name = f"{Path(record.source).name} row {record.row} ({record.material_id})"
    try:
        structure = structure_from_cif(record.cif, name)
        crystal = Crystal.from_structure(structure, symprec=settings["symprec"],
                                         angle_tolerance=settings["angle_tolerance"])
        if len(crystal.sites) > settings["n_max"]:
            raise CrystalError("too_many_sites", f"{len(crystal.sites)} symmetry-distinct sites > n_max="
                                                 f"{settings['n_max']}")
        tok = _tokenizer()
        plain = tok.encode(crystal)
        prompted = tok.encode(crystal, with_composition=True)
    except CrystalError as err:
        return {**where, "reason": err.reason, "message": f"{name}: {err}"}
    except ValueError as err:  # any other value spglib / pymatgen reject
        return {**where, "reason": "invalid", "message": f"{name}: {type(err).__name__}: {err}"}
    n_prompt = len(prompted) - len(plain)
    return {
        **where,
        "text": crystal.to_text(),
        "properties": record.properties,
        "ids": plain.ids, "values": plain.values, "slots": plain.slots,
        "prompt_ids": prompted.ids[1:1 + n_prompt], "prompt_slots": prompted.slots[1:1 + n_prompt],
        "num_atoms": plain.num_atoms, "n_sites": len(crystal.sites),
    }


def _process_chunk(records, settings: dict) -> list[dict]:
    return [_process(r, settings) for r in records]


_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER  # one tokenizer per process, built on first use
    if _TOKENIZER is None:
        from .tokenizer import CrystalTokenizer

        _TOKENIZER = CrystalTokenizer()
    return _TOKENIZER


def _chunks(records, size: int):
    chunk = []
    for r in records:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------- prepare
def prepare(inputs, out_dir, config: PrepareConfig | None = None, force: bool = False,
            progress: bool = True) -> PrepareSummary:
    """Analyse every structure of ``inputs`` (CSV files, CIF files, CIF folders) into ``out_dir``.

    Bad inputs are skipped and counted by reason (also listed in ``skipped.jsonl``); nothing
    stops the run. Returns immediately when ``out_dir`` holds a cache with the same sources
    and settings, unless ``force``.
    """
    from tqdm.auto import tqdm

    from .io import read_records

    config = config or PrepareConfig()
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not inputs:
        raise ValueError("prepare needs at least one input CSV file, CIF file or CIF folder")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    fingerprint = _fingerprint(inputs, config)
    if not force and _cache_matches(out_dir, fingerprint):
        meta = json.loads((out_dir / "meta.json").read_text())
        c = meta["counts"]
        return PrepareSummary(out_dir, c["total"], c["kept"], c["skipped"], reused=True,
                              elapsed_s=time.perf_counter() - t0)

    records = [r for p in inputs for r in read_records(p)]
    settings = config.cache_settings()
    results: list[dict] = []
    bar = tqdm(total=len(records), desc="prepare", unit="crystal", disable=not progress)
    chunks = list(_chunks(records, config.chunk_size))
    if config.workers == 1:
        for chunk in chunks:
            results += _process_chunk(chunk, settings)
            bar.update(len(chunk))
    else:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            for chunk_results in pool.map(_process_chunk, chunks, [settings] * len(chunks)):
                results += chunk_results
                bar.update(len(chunk_results))
    bar.close()

    kept = [r for r in results if "text" in r]
    skipped = [r for r in results if "text" not in r]
    counts = {"total": len(results), "kept": len(kept), "skipped": {}}
    for r in skipped:
        counts["skipped"][r["reason"]] = counts["skipped"].get(r["reason"], 0) + 1
    meta = {
        **fingerprint,
        "counts": counts,
        "max_length": max((len(r["ids"]) + len(r["prompt_ids"]) for r in kept), default=0),
        "max_sites": max((r["n_sites"] for r in kept), default=0),
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_atomically(out_dir, kept, skipped, meta)
    return PrepareSummary(out_dir, counts["total"], counts["kept"], counts["skipped"], reused=False,
                          elapsed_s=time.perf_counter() - t0)


def _flat(arrays, dtype) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)
    return flat, offsets


def _write_atomically(out_dir: Path, kept: list[dict], skipped: list[dict], meta: dict) -> None:
    from safetensors.numpy import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        ids, offsets = _flat([r["ids"] for r in kept], np.int64)
        values, _ = _flat([r["values"] for r in kept], np.float64)
        slots, _ = _flat([r["slots"] for r in kept], np.int64)
        prompt_ids, prompt_offsets = _flat([r["prompt_ids"] for r in kept], np.int64)
        prompt_slots, _ = _flat([r["prompt_slots"] for r in kept], np.int64)
        save_file({
            "ids": ids, "values": values, "slots": slots, "offsets": offsets,
            "prompt_ids": prompt_ids, "prompt_slots": prompt_slots, "prompt_offsets": prompt_offsets,
            "num_atoms": np.array([r["num_atoms"] for r in kept], dtype=np.int64),
        }, str(tmp / "tokens.safetensors"))
        _write_jsonl(tmp / "crystals.jsonl", (
            {k: r[k] for k in ("source", "row", "material_id", "text", "properties")} for r in kept))
        _write_jsonl(tmp / "skipped.jsonl", skipped)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------- reading back
@dataclass
class PreparedData:
    """A prepared directory in memory."""

    path: Path
    tensors: dict[str, np.ndarray]
    records: list[dict]
    meta: dict

    def __len__(self) -> int:
        return len(self.records)

    def crystal(self, i: int):
        """The i-th kept crystal as a :class:`Crystal` (from its exact text form)."""
        from .crystal import Crystal

        return Crystal.from_text(self.records[i]["text"])

    def stream(self, i: int, with_prompt: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, values, slots) of crystal i, optionally with the composition prompt after [BOS]."""
        t = self.tensors
        a, b = t["offsets"][i], t["offsets"][i + 1]
        ids, values, slots = t["ids"][a:b], t["values"][a:b], t["slots"][a:b]
        if not with_prompt:
            return ids, values, slots
        pa, pb = t["prompt_offsets"][i], t["prompt_offsets"][i + 1]
        p_ids, p_slots = t["prompt_ids"][pa:pb], t["prompt_slots"][pa:pb]
        return (np.concatenate([ids[:1], p_ids, ids[1:]]),
                np.concatenate([values[:1], np.zeros(len(p_ids)), values[1:]]),
                np.concatenate([slots[:1], p_slots, slots[1:]]))


def load_prepared(path) -> PreparedData:
    """Read a prepared directory written by :func:`prepare`."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a prepared directory (no meta.json); run `crystalformer data "
                                "prepare` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} was prepared with format {meta.get('format_version')}, this package reads "
                         f"{FORMAT_VERSION}; prepare it again")
    tensors = load_file(str(path / "tokens.safetensors"))
    with open(path / "crystals.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    if len(records) != len(tensors["num_atoms"]):
        raise ValueError(f"{path}: crystals.jsonl has {len(records)} rows but the tensors hold "
                         f"{len(tensors['num_atoms'])} crystals")
    return PreparedData(path, tensors, records, meta)
