"""Data preparation: CSV files / CIF folders -> a cached, prepared directory of token streams.

Symmetry analysis costs ~10-15 ms per structure, so it runs once, in parallel, and is cached
(DESIGN section 10). ``prepare`` writes a *prepared directory*::

    tokens.safetensors   token tensors of the kept crystals (layout below)
    crystals.jsonl       per kept crystal: source, row, material_id, text form, properties
    skipped.jsonl        per skipped input: source, row, material_id, reason, message
    meta.json            format and package version, sources (path + sha256), settings,
                         counts (total, kept, skipped per reason), vocabulary size, n_max,
                         longest stream, elapsed seconds
    tokenizer.json       the vocabulary the ids refer to

Tensors in ``tokens.safetensors`` (n kept crystals; safetensors, so no pickle anywhere):

- ``ids`` int64, ``values`` float64, ``slots`` int8: the streams WITHOUT composition prompt,
  concatenated; crystal i is ``[offsets[i]:offsets[i + 1]]`` (``offsets`` int64, n + 1).
- ``prompt_ids`` int64, ``prompt_slots`` int8, ``prompt_offsets`` int64: the
  ``[COMP] El N<n> .. [/COMP]`` tokens of each crystal, stored apart so that batching can
  insert them after ``[BOS]`` on a random fraction of examples (their values are all 0).
- ``num_atoms`` int64 (atoms in the conventional cell), ``n_sites`` int64 (Wyckoff sites).

The Dataset and LightningDataModule live in :mod:`crystalformer.datamodule` (torch and
Lightning); padding streams into batches in :mod:`crystalformer.model.batching` (torch only).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import swap_into_place
from .grammar import DEFAULT_N_MAX

FORMAT_VERSION = 1
FILES = ("tokens.safetensors", "crystals.jsonl", "skipped.jsonl", "meta.json", "tokenizer.json")

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PrepareConfig:
    """Settings of :func:`prepare`. ``symprec``, ``angle_tolerance`` and ``n_max`` key the cache."""

    symprec: float = 0.01
    """spglib distance tolerance in Å. 0.01 is strict (as CrystalFormer); 0.1 (as Materials
    Project) finds higher symmetry in slightly distorted structures, hence fewer sites."""
    angle_tolerance: float = 5.0
    """spglib angle tolerance in degrees (-1 lets spglib choose from symprec)."""
    n_max: int = DEFAULT_N_MAX
    """Most symmetry-distinct (Wyckoff) sites per crystal; crystals with more are skipped as
    ``too_many_sites``. MP-20 needs ~21 in conventional cells, MPTS-52 more."""
    workers: int = 1
    """Processes for the symmetry analysis; 1 runs in this process. Does not change the output."""
    chunk_size: int = 32
    """Records per task sent to a worker process (larger: less overhead, coarser progress)."""

    def __post_init__(self):
        if not 0 < self.symprec < 1:
            raise ValueError(f"symprec must be in (0, 1) Å, got {self.symprec}")
        if not (0 <= self.angle_tolerance < 30 or self.angle_tolerance == -1):
            raise ValueError(f"angle_tolerance must be in [0, 30) degrees or -1 (spglib's choice), "
                             f"got {self.angle_tolerance}")
        for name in ("n_max", "workers", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def cache_settings(self) -> dict:
        """The settings that change the output (and so key the cache)."""
        return {"symprec": self.symprec, "angle_tolerance": self.angle_tolerance, "n_max": int(self.n_max)}


@dataclass
class PrepareSummary:
    """What :func:`prepare` did; ``table()`` formats it for people."""

    out_dir: Path
    total: int
    kept: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    reused: bool = False  # True: an existing cache matched and nothing was computed
    elapsed_s: float = 0.0  # of this call (a reused cache: the time to check it)
    build_s: float = 0.0  # of the build that wrote the directory

    def table(self) -> str:
        rows = [("output", str(self.out_dir)),
                ("cache", "reused (sources and settings unchanged)" if self.reused else "built"),
                ("structures", str(self.total)), ("kept", str(self.kept)),
                ("skipped", str(sum(self.skipped.values())))]
        rows += [(f"  {reason}", str(n)) for reason, n in sorted(self.skipped.items())]
        built = f" (built in {self.build_s:.1f} s)" if self.reused else ""
        rows.append(("elapsed", f"{self.elapsed_s:.1f} s{built}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    @classmethod
    def read(cls, out_dir) -> PrepareSummary | None:
        """The summary stored in a prepared directory's meta.json (None when it holds none)."""
        counts = (_read_meta(Path(out_dir)) or {}).get("counts")
        if not isinstance(counts, dict) or not {"total", "kept", "skipped"} <= counts.keys():
            return None
        return cls(Path(out_dir), counts["total"], counts["kept"], counts["skipped"], reused=True)

    def line(self, name: str = "") -> str:
        """One line for a training log: kept of total, and what was skipped and why."""
        n_skipped = sum(self.skipped.values())
        head = f"{name or self.out_dir}: {self.kept} of {self.total} structures kept"
        if not n_skipped:
            return head + ", none skipped"
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return f"{head}, {n_skipped} skipped ({reasons}; listed in {Path(self.out_dir) / 'skipped.jsonl'})"

    def load(self) -> PreparedData:
        return load_prepared(self.out_dir)


# ---------------------------------------------------------------------- sources and the cache key
def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_files(inputs) -> list[Path]:
    """The files behind ``inputs`` (CSV files, CIF files, folders of CIF files), in reading order."""
    from .io import is_csv

    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".cif")
            if not found:
                raise FileNotFoundError(f"no *.cif files in folder {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            kind = "CSV file" if is_csv(p) else "input (CSV file, CIF file or folder)"
            raise FileNotFoundError(f"{kind} not found: {p}")
    return files


def _fingerprint(inputs, config: PrepareConfig) -> dict:
    """Everything that decides the output. Source paths are recorded but only their hashes key the cache."""
    from . import __version__
    from .tokenizer import CrystalTokenizer

    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,  # canonicalization may change between versions
        "sources": [{"path": str(f), "sha256": file_sha256(f)} for f in source_files(inputs)],
        "settings": config.cache_settings(),
        "vocab_size": CrystalTokenizer().vocab_size,
    }


def _read_meta(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cache_matches(out_dir: Path, fingerprint: dict) -> bool:
    meta = _read_meta(out_dir)
    if meta is None or not all((out_dir / f).is_file() for f in FILES):
        return False
    same = all(meta.get(k) == v for k, v in fingerprint.items() if k != "sources")
    return same and [s.get("sha256") for s in meta.get("sources", [])] == [s["sha256"] for s in fingerprint["sources"]]


def _check_writable(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a prepared directory (it would be deleted)."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and _read_meta(out_dir) is None)):
        raise FileExistsError(f"{out_dir} exists and is not a prepared directory (no readable meta.json); "
                              "choose another --out or remove it")


# ---------------------------------------------------------------------- the per-record work (in workers)
def _process(record, settings: dict) -> dict:
    """Analyse one record: a kept entry (with its token arrays) or a skipped one. Never raises for bad input."""
    from spglib.error import SpglibError

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
                                                 f"{settings['n_max']} ({crystal.formula}, space group "
                                                 f"{crystal.space_group})")
        plain = _tokenizer().encode(crystal)
        prompted = _tokenizer().encode(crystal, with_composition=True)
        _check_grammar(plain.ids, settings["n_max"], name, crystal)
    except CrystalError as err:
        message = str(err) if str(err).startswith(name) else f"{name}: {err}"
        return {**where, "reason": err.reason, "message": message}
    except SpglibError as err:
        return {**where, "reason": "symmetry", "message": f"{name}: spglib: {err}"}
    except (ValueError, ArithmeticError, IndexError, KeyError) as err:  # other values the libraries reject
        return {**where, "reason": "invalid", "message": f"{name}: {type(err).__name__}: {err}"}
    n_prompt = len(prompted) - len(plain)  # prompted = [BOS] prompt rest-of-plain
    return {**where, "text": crystal.to_text(), "properties": record.properties,
            "ids": plain.ids, "values": plain.values, "slots": plain.slots,
            "prompt_ids": prompted.ids[1:1 + n_prompt], "prompt_slots": prompted.slots[1:1 + n_prompt],
            "num_atoms": plain.num_atoms, "n_sites": len(crystal.sites)}


def _process_chunk(records, settings: dict) -> list[dict]:
    with warnings.catch_warnings():  # pymatgen notes it per element without one (Ar, He, Ne) while sorting formulas
        warnings.filterwarnings("ignore", message="No Pauling electronegativity", category=UserWarning)
        return [_process(r, settings) for r in records]


def _check_grammar(ids: np.ndarray, n_max: int, name: str, crystal) -> None:
    """Keep only streams the sampler's grammar can produce (~0.4 ms each).

    E.g. two atoms of different elements closer than symprec are both placed on one Wyckoff
    position without free parameters (``221 a Na - a Cl -``), which no grammar-masked
    sample can contain.
    """
    from .errors import CrystalError
    from .grammar import IllegalTokenError

    try:
        _grammar(n_max).check(ids)
    except IllegalTokenError as err:
        raise CrystalError("invalid", f"{name}: {crystal} breaks the token grammar ({err})") from None


_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER  # one default tokenizer per process, built on first use
    if _TOKENIZER is None:
        from .tokenizer import CrystalTokenizer

        _TOKENIZER = CrystalTokenizer()
    return _TOKENIZER


@functools.lru_cache(maxsize=4)
def _grammar(n_max: int):
    from .grammar import Grammar

    return Grammar(_tokenizer(), n_max=n_max)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _run(records: list, config: PrepareConfig, progress: bool) -> list[dict]:
    """Results in record order, whatever the number of workers."""
    from tqdm.auto import tqdm

    settings = config.cache_settings()
    chunks = _chunks(records, config.chunk_size)
    results: list[dict] = []
    with tqdm(total=len(records), desc="prepare", unit="structure", disable=not progress) as bar:
        if config.workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                results += _process_chunk(chunk, settings)
                bar.update(len(chunk))
            return results
        pool = _pool(min(config.workers, len(chunks)))
        try:
            for chunk_results in pool.map(_process_chunk, chunks, [settings] * len(chunks)):
                results += chunk_results
                bar.update(len(chunk_results))
        finally:  # on Ctrl-C or an error: drop the queued chunks instead of finishing them
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _pool(workers: int):
    """Worker processes from a fork server: they do not inherit this process's threads (torch,
    tqdm), which plain fork makes unsafe, and start faster than spawn (the server imports the
    analysis modules once; each worker is then forked from it)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["crystalformer.data", "crystalformer.crystal", "crystalformer.tokenizer",
                                    "pymatgen.core", "pymatgen.io.cif", "spglib"])
    else:
        ctx = mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


# ---------------------------------------------------------------------- prepare
def prepare(inputs, out_dir, config: PrepareConfig | None = None, force: bool = False,
            progress: bool = True) -> PrepareSummary:
    """Analyse every structure of ``inputs`` (CSV files, CIF files, CIF folders) into ``out_dir``.

    Bad inputs (unreadable CIF, disordered sites, unknown elements, more than ``n_max`` sites,
    symmetry failures, token streams the grammar rejects) are skipped, counted by reason
    (:attr:`CrystalError.REASONS`) and listed in ``skipped.jsonl``; they never stop the run. When ``out_dir`` already holds a cache built from files with the same
    sha256 hashes and the same settings, it is reused and returned at once (``reused=True``)
    unless ``force``. The directory is written to a temporary sibling and renamed into place,
    so ``out_dir`` is always either complete or absent (or the previous complete version).
    """
    from .io import read_records

    config = config or PrepareConfig()
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not inputs:
        raise ValueError("prepare needs at least one input: a CSV file, a CIF file or a folder of CIF files")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    fingerprint = _fingerprint(inputs, config)
    if not force and _cache_matches(out_dir, fingerprint):
        meta = _read_meta(out_dir)
        c = meta["counts"]
        log.info("reusing prepared data in %s (sources and settings unchanged)", out_dir)
        return PrepareSummary(out_dir, c["total"], c["kept"], c["skipped"], reused=True,
                              elapsed_s=time.perf_counter() - t0, build_s=meta["elapsed_s"])
    _check_writable(out_dir)

    records = [r for p in inputs for r in read_records(p)]
    results = _run(records, config, progress)
    kept = [r for r in results if "text" in r]
    skipped = [r for r in results if "text" not in r]
    counts = {"total": len(results), "kept": len(kept), "skipped": {}}
    for r in skipped:
        counts["skipped"][r["reason"]] = counts["skipped"].get(r["reason"], 0) + 1
    counts["skipped"] = dict(sorted(counts["skipped"].items()))
    meta = {**fingerprint, "config": asdict(config), "n_max": int(config.n_max), "counts": counts,
            "max_length": max((len(r["ids"]) + len(r["prompt_ids"]) for r in kept), default=0),
            "max_length_no_prompt": max((len(r["ids"]) for r in kept), default=0),
            "max_sites": max((r["n_sites"] for r in kept), default=0),
            "max_atoms": max((r["num_atoms"] for r in kept), default=0),
            "elapsed_s": round(time.perf_counter() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_prepared(out_dir, kept, skipped, meta)
    return PrepareSummary(out_dir, counts["total"], counts["kept"], counts["skipped"], reused=False,
                          elapsed_s=time.perf_counter() - t0, build_s=time.perf_counter() - t0)


def _flat(arrays, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenation of ``arrays`` and the (n + 1,) offsets of each one in it."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)
    return flat, offsets


def write_prepared(out_dir: Path, kept: list[dict], skipped: list[dict], meta: dict) -> None:
    """Write every file into a temporary sibling of ``out_dir``, then swap it into place."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        ids, offsets = _flat([r["ids"] for r in kept], np.int64)
        prompt_ids, prompt_offsets = _flat([r["prompt_ids"] for r in kept], np.int64)
        save_file({
            "ids": ids, "values": _flat([r["values"] for r in kept], np.float64)[0],
            "slots": _flat([r["slots"] for r in kept], np.int8)[0], "offsets": offsets,
            "prompt_ids": prompt_ids, "prompt_slots": _flat([r["prompt_slots"] for r in kept], np.int8)[0],
            "prompt_offsets": prompt_offsets,
            "num_atoms": np.array([r["num_atoms"] for r in kept], dtype=np.int64),
            "n_sites": np.array([r["n_sites"] for r in kept], dtype=np.int64),
        }, str(tmp / "tokens.safetensors"), metadata={"format_version": str(FORMAT_VERSION)})
        _write_jsonl(tmp / "crystals.jsonl",
                     ({k: r[k] for k in ("source", "row", "material_id", "text", "properties")} for r in kept))
        _write_jsonl(tmp / "skipped.jsonl", skipped)
        _tokenizer().save(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        swap_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, allow_nan=False) + "\n")


# ---------------------------------------------------------------------- reading back
@dataclass
class PreparedData:
    """A prepared directory in memory: tensors (numpy), per-crystal records, meta."""

    path: Path
    tensors: dict[str, np.ndarray]
    records: list[dict]
    meta: dict
    _tokenizer: object = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.records)

    def crystal(self, i: int):
        """The i-th kept crystal, decoded from its exact text form (:meth:`Crystal.from_text`)."""
        from .crystal import Crystal

        return Crystal.from_text(self.records[i]["text"])

    def decode(self, i: int, with_prompt: bool = False):
        """The i-th kept crystal, decoded from its stored tokens (equal to :meth:`crystal`)."""
        ids, values, _ = self.stream(i, with_prompt)
        return self.tokenizer.decode(ids, values)

    @property
    def tokenizer(self):
        """The vocabulary saved with the data (``tokenizer.json``)."""
        if self._tokenizer is None:
            from .tokenizer import CrystalTokenizer

            self._tokenizer = CrystalTokenizer.load(self.path)
        return self._tokenizer

    def stream(self, i: int, with_prompt: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, values, slots) of crystal i; ``with_prompt`` inserts its composition prompt after [BOS]."""
        t = self.tensors
        a, b = t["offsets"][i], t["offsets"][i + 1]
        ids, values, slots = t["ids"][a:b], t["values"][a:b], t["slots"][a:b].astype(np.int64)
        if not with_prompt:
            return ids, values, slots
        pa, pb = t["prompt_offsets"][i], t["prompt_offsets"][i + 1]
        p_ids, p_slots = t["prompt_ids"][pa:pb], t["prompt_slots"][pa:pb].astype(np.int64)
        return (np.concatenate([ids[:1], p_ids, ids[1:]]),
                np.concatenate([values[:1], np.zeros(len(p_ids)), values[1:]]),
                np.concatenate([slots[:1], p_slots, slots[1:]]))

    def skipped(self) -> list[dict]:
        """Every skipped input with its reason and message (read from ``skipped.jsonl``)."""
        return _read_jsonl(self.path / "skipped.jsonl")


def load_prepared(path) -> PreparedData:
    """Read a prepared directory written by :func:`prepare` (safetensors + JSON; no pickle)."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta = _read_meta(path)
    if meta is None:
        raise FileNotFoundError(f"{path} is not a prepared directory (no readable meta.json); run "
                                "`crystalformer data prepare` first")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} was prepared with format {meta.get('format_version')}, this package reads "
                         f"format {FORMAT_VERSION}; prepare it again (add --force)")
    tensors = load_file(str(path / "tokens.safetensors"))
    records = _read_jsonl(path / "crystals.jsonl")
    if not len(records) == len(tensors["num_atoms"]) == meta["counts"]["kept"]:
        raise ValueError(f"{path}: crystals.jsonl has {len(records)} rows, the tensors hold "
                         f"{len(tensors['num_atoms'])} crystals and meta.json says {meta['counts']['kept']}")
    return PreparedData(path, tensors, records, meta)


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/crystalformer/prepared`` (``~/.cache/...`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crystalformer" / "prepared"


def as_prepared(inputs, cache_dir, config: PrepareConfig, progress: bool = True, announce: bool = False) -> list[Path]:
    """Prepared directories for ``inputs``: prepared dirs pass through; CSV / CIF inputs are prepared
    (cached) into ``cache_dir/<name>-<hash of the resolved path>``. ``progress``: a progress bar
    while preparing; ``announce``: one line per input (stderr) saying how many structures were
    kept and how many skipped, by reason."""
    import sys

    out = []
    for p in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        p = Path(p)
        if (p / "meta.json").is_file():
            summary = PrepareSummary.read(p) if announce else None
            if summary is not None:
                print(summary.line(str(p)), file=sys.stderr)
            out.append(p)
            continue
        key = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:10]
        target = Path(cache_dir) / f"{p.name.split('.')[0]}-{key}"
        summary = prepare([p], target, config, progress=progress)
        if announce:
            print(summary.line(str(p)), file=sys.stderr)
        out.append(target)
    return out
