"""The public benchmark data sets: a registry of checksummed files and a verifying downloader.

``download("mp_20", "data")`` writes ``data/mp_20/{train,val,test}.csv`` (CDVAE CSV format, ready
for ``crystalformer data prepare``). Every file is streamed to a temporary sibling, checked
against the size and checksum recorded here, and only then renamed into place; a file already
present with the right checksum is not fetched again.

Checksums were read from the source repositories at the pinned commits: the sha256 and size of
a Git LFS file are the ``oid sha256:`` and ``size`` of its pointer; of a plain file, the hash of
the blob. The largest CDVAE/DiffCSP CSVs were absent from the snapshots we read, so for those
the registry holds the git blob id instead (SHA-1 of ``b"blob <size>\\0" + content``, the id
in the commit's tree): as binding as sha256 against a wrong or truncated file, size included.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REGISTRY", "Dataset", "DownloadError", "RemoteFile", "download", "get", "registry_table"]

_CHUNK = 1 << 20  # bytes per read: 1 MiB


class DownloadError(RuntimeError):
    """A file could not be fetched or failed verification; the message names the file and URL."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set, pinned by checksum."""

    path: str  # where it lands, relative to OUT/<data set>/
    url: str  # pinned to a commit, so the bytes behind it do not change
    sha256: str | None = None  # hex digest of the content
    size: int | None = None  # bytes; None where only the git blob id is known (it covers the size)
    git_blob: str | None = None  # git object id of the content (40 hex digits)
    unpack: str | None = None  # "zip": extracted into OUT/<data set>/ after verification

    def __post_init__(self):
        if self.sha256 is None and self.git_blob is None:
            raise ValueError(f"{self.path}: a RemoteFile needs a sha256 or a git_blob checksum")
        for kind, value, n in (("sha256", self.sha256, 64), ("git_blob", self.git_blob, 40)):
            if value is not None and (len(value) != n or value.strip("0123456789abcdef")):
                raise ValueError(f"{self.path}: {kind} must be {n} lower-case hex digits, got {value!r}")
        if self.unpack not in (None, "zip"):
            raise ValueError(f"{self.path}: unpack must be None or 'zip', got {self.unpack!r}")


@dataclass(frozen=True)
class Dataset:
    """A named benchmark data set and where it comes from."""

    name: str
    description: str
    source: str  # repository@commit the files and checksums were read from
    license: str
    citation: str
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int | None:
        """Total bytes, or None when some file's size is not recorded."""
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_CDVAE, _CDVAE_AT = "txie-93/cdvae", "f857f598d6f6cca5dc1ea0582d228f12dcc2c2ea"
_DIFFCSP, _DIFFCSP_AT = "jiaor17/DiffCSP", "7121d159826efa2ba9500bf299250d96da37f146"
_MATTERGEN, _MATTERGEN_AT = "microsoft/mattergen", "ac9ddd406171138c3f037d06b9b53fedbbb1c536"
_CDVAE_CITE = "Xie et al., Crystal Diffusion Variational Autoencoder, ICLR 2022 (arXiv:2110.06197)"
_MP_CITE = "Jain et al., APL Materials 1, 011002 (2013)"


def _cdvae(name: str, **checksums: dict) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f"{split}.csv", _github(_CDVAE, _CDVAE_AT, f"data/{name}/{split}.csv"), **checksums[split])
                 for split in ("train", "val", "test"))


REGISTRY: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mp_20", "45,231 Materials Project crystals with <= 20 atoms (27,136 / 9,047 / 9,046)",
            f"{_CDVAE}@{_CDVAE_AT}", "CC-BY 4.0 (Materials Project); repository MIT", f"{_MP_CITE}; {_CDVAE_CITE}",
            _cdvae("mp_20", train={"git_blob": "b1c9d498565ac2fd8d075a51ff2ef5e51ba6c21f"},
                   val={"git_blob": "7efe4d7ebeb4f460ceaad35e5326c42111d9c9a1"},
                   test={"git_blob": "5dc643041df53f5ce4970a79930ad262b4f07acd"})),
    Dataset("mpts_52", "40,476 Materials Project crystals with <= 52 atoms, split by time (27,380 / 5,000 / 8,096)",
            f"{_DIFFCSP}@{_DIFFCSP_AT}", "CC-BY 4.0 (Materials Project); repository MIT",
            f"Jiao et al., DiffCSP, NeurIPS 2023; Baird et al., mp-time-split; {_MP_CITE}",
            tuple(RemoteFile(f"{split}.csv", _github(_DIFFCSP, _DIFFCSP_AT, f"data/mpts_52/{split}.csv"), git_blob=blob)
                  for split, blob in (("train", "28c53b0a0fd3f32fb8078aca8e5b484e372790c6"),
                                      ("val", "a377ba0ca7bee37ee69d9f50f8362eaa35d9f690"),
                                      ("test", "2e8af159618f63be346b6527f155514323964423")))),
    Dataset("perov_5", "18,928 ABX3 perovskites, 5 atoms per cell (11,356 / 3,787 / 3,785)",
            f"{_CDVAE}@{_CDVAE_AT}", "repository MIT; data from CMR (Castelli et al.)",
            f"Castelli et al., Energy Environ. Sci. 5, 9034 (2012); {_CDVAE_CITE}",
            _cdvae("perov_5", train={"git_blob": "0769074b5d51d293b765c4371b8f55c468c9c9f2"},
                   val={"sha256": "326f401219901270374b71e2faff63df3a29a99fd26f469993b9f476b693daf2", "size": 3673814,
                        "git_blob": "4a2c8dde98347dd0e01fa83dcf3982c2abe98f9f"},
                   test={"sha256": "a85878c685037f0a578257f6d4fcdde00e968dbab73c5f1e90ecef65218513f6", "size": 3671842,
                         "git_blob": "d3c5d5af4b27a2a139149f2bb73c8a3dba9d8ac1"})),
    Dataset("carbon_24", "10,153 carbon structures, 6-24 atoms, AIRSS at 10 GPa (6,091 / 2,032 / 2,030)",
            f"{_CDVAE}@{_CDVAE_AT}", "open access (Materials Cloud); repository MIT",
            f"Pickard, Materials Cloud 2020, doi:10.24435/MATERIALSCLOUD:2020.0026/v1; {_CDVAE_CITE}",
            _cdvae("carbon_24", train={"git_blob": "5e7ae970fbad8ddc46b6963e8cd6e425f11783a6"},
                   val={"sha256": "36c00689cd63073c954a58bc6ed6e2adb7aeed5a630c994970959a1babffd50e", "size": 2321923,
                        "git_blob": "b3e29b927883642426ca1d9632d00359b412742b"},
                   test={"sha256": "386b17c08816f434818d51e46687bf72ff3f92348f3ba24823e4758f1fe8a969", "size": 2319350,
                         "git_blob": "9beca843fde489de1fe288b32f9e3ff710d42803"})),
    Dataset("alex_mp_20", "~600k Alexandria + MP-20 crystals, <= 20 atoms, E_hull < 0.1 eV/atom (MatterGen; train/val)",
            f"{_MATTERGEN}@{_MATTERGEN_AT}", "CC-BY 4.0 (Alexandria, Materials Project); repository MIT",
            "Zeni et al., MatterGen, Nature 639, 624 (2025); Schmidt et al., Materials Cloud 2022.126",
            (RemoteFile("alex_mp_20.zip", f"https://media.githubusercontent.com/media/{_MATTERGEN}/{_MATTERGEN_AT}"
                                          "/data-release/alex-mp/alex_mp_20.zip",  # Git LFS content
                        sha256="6688e652e45fac4ac8b016dbc4a3280afde9ba687bdacfd8c676775ed19b6228", size=186506244,
                        unpack="zip"),)),
)}


def get(name: str) -> Dataset:
    """The registered data set ``name``; a ValueError lists the known names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _human(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 1e6:.1f} MB"


def registry_table() -> str:
    """The registry as a text table: name, files, total size, source."""
    rows = [("name", "files", "size", "source")]
    rows += [(d.name, ", ".join(f.path for f in d.files), _human(d.size), d.source) for d in REGISTRY.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3] for row in rows)


def _mismatch(path: Path, spec: RemoteFile) -> str | None:
    """What is wrong with the bytes at ``path`` (size, sha256, git blob id), or None if they match."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size mismatch: expected {spec.size} bytes, got {size}"
    sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
    if spec.sha256 is not None and sha256.hexdigest() != spec.sha256:
        return f"sha256 mismatch: expected {spec.sha256}, got {sha256.hexdigest()}"
    if spec.git_blob is not None and blob.hexdigest() != spec.git_blob:
        return f"git blob id mismatch: expected {spec.git_blob}, got {blob.hexdigest()}"
    return None


def _fetch(spec: RemoteFile, target: Path, progress: bool, timeout: float) -> None:
    """Stream ``spec.url`` to a temporary sibling of ``target``, verify, then rename it into place."""
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    # a new name next to the target (same file system, so the final rename is atomic); opened with
    # "xb" rather than tempfile.mkstemp so that the kept file gets the usual umask permissions
    tmp = target.parent / f".{target.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "xb") as out:
            try:
                with urllib.request.urlopen(spec.url, timeout=timeout) as response:
                    total = spec.size or int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, desc=target.name, unit="B", unit_scale=True, disable=not progress) as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError) as err:  # HTTPError, timeouts and resets are OSErrors too
                raise DownloadError(f"cannot download {spec.url}: {err}; download it by hand and put it at "
                                    f"{target} (it is checked and kept on the next run)") from None
        if problem := _mismatch(tmp, spec):
            raise DownloadError(f"{target.name} from {spec.url}: {problem}; the download was deleted")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _unpack_zip(archive: Path, dest: Path) -> list[Path]:
    """Extract ``archive`` into ``dest``, one top-level folder of the archive dropped; returns the files.

    Members already present with the archive's size are kept. Everything is extracted into a
    temporary sibling first and then renamed file by file, so no file is ever half-written.
    """
    from .atomic import temporary_sibling

    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for m in members:
            if Path(m.filename).is_absolute() or ".." in Path(m.filename).parts:
                raise DownloadError(f"{archive}: member {m.filename!r} would land outside {dest}")
        tops = {Path(m.filename).parts[0] for m in members}
        strip = 1 if len(tops) == 1 and all(len(Path(m.filename).parts) > 1 for m in members) else 0
        final = {m.filename: dest.joinpath(*Path(m.filename).parts[strip:]) for m in members}
        todo = [m for m in members if not (final[m.filename].is_file()
                                           and final[m.filename].stat().st_size == m.file_size)]
        if todo:
            tmp = temporary_sibling(dest / f"{archive.stem}-unpack")
            try:
                zf.extractall(tmp, members=todo)
                for m in todo:
                    final[m.filename].parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / m.filename, final[m.filename])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return list(final.values())


def download(name: str, out, *, progress: bool = True, timeout: float = 60.0) -> list[Path]:
    """Fetch data set ``name`` into ``out/<name>/`` and verify every file; returns its data files.

    Files already present with the right checksum are kept (a second run fetches nothing). A
    failed download or checksum leaves no partial file behind; the other files are still tried,
    then one :class:`DownloadError` names every failure. ``timeout`` (seconds) bounds each
    network wait, not the whole transfer.
    """
    dataset = get(name)
    dest = Path(out) / dataset.name
    written, failures = [], []
    for spec in dataset.files:
        target = dest / spec.path
        present = _mismatch(target, spec) if target.is_file() else "absent"
        try:
            if present is not None:
                _fetch(spec, target, progress, timeout)
        except DownloadError as err:
            failures.append(str(err) if present == "absent" else f"{err} (the file there now: {present})")
            continue
        written += _unpack_zip(target, dest) if spec.unpack == "zip" else [target]
    if failures:
        raise DownloadError("\n".join(failures))
    return written
