"""All-or-nothing folder writes: assemble under a temporary sibling, then swap it into place.

Output folders are also guarded: :func:`check_output_folder` refuses to replace a folder that is
not a crystalformer output (or is the current, home or root folder, or a symbolic link), and
:func:`claim_output` takes a lock file beside the folder so that a second process writing to the
same place stops with one line instead of silently replacing the first one's files. Temporary
folders carry their process id; one left by a killed process is removed by the next write
beside it.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# what crystalformer writes into an output folder; anything else means "not ours"
OUTPUT_SUFFIXES = {".cif", ".json", ".png", ".csv", ".txt", ".vasp", ".xyz", ".extxyz", ".log"}
OUTPUT_INDEX = "samples.json"
_HELD: set[Path] = set()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Delete ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings left by processes that are gone."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)-")
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        m = pattern.match(sibling.name)
        if m and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
            shutil.rmtree(sibling, ignore_errors=True)


def temporary_sibling(target) -> Path:
    """A new empty folder next to ``target`` (same file system, so the final rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the finished folder should follow the umask
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def assembled(target):
    """``with assembled(out) as tmp:`` fill ``tmp``; on success it replaces ``out``, on any failure
    (an exception, Ctrl-C, SIGTERM through :func:`exit_on_sigterm`) it is removed."""
    tmp = temporary_sibling(target)
    try:
        yield tmp
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        release_output(target)


def is_crystalformer_output(folder) -> bool:
    """A flat folder holding a ``samples.json`` and only files of the kinds crystalformer writes."""
    folder = Path(folder)
    if not (folder / OUTPUT_INDEX).is_file():
        return False
    for entry in folder.iterdir():
        if entry.is_dir() or entry.is_symlink():
            return False
        if entry.suffix.lower() not in OUTPUT_SUFFIXES:
            return False
    return True


def check_output_folder(out, overwrite: bool) -> Path:
    """``out`` as a folder this process may write: checked, and claimed (see :func:`claim_output`).

    Refuses an empty name, a symbolic link, a file, the current / home / root folder, a non-empty
    folder without ``overwrite``, and (with ``overwrite``) a folder that is not a crystalformer
    output. Errors are one line naming ``out``.
    """
    if str(out) == "":
        raise ValueError("--out is empty: name the folder to write")
    out = Path(out)
    if out.is_symlink():
        raise NotADirectoryError(f"{out} is a symbolic link; give the folder it points to, or a new name")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        resolved = out.resolve()
        protected = {Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)}
        if resolved in protected:
            raise FileExistsError(f"{out} is the current, home or root folder; crystalformer never replaces it: "
                                  "give a new folder name")
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite (overwrite=True) to replace it")
        if not is_crystalformer_output(out):
            raise FileExistsError(f"{out} is not a crystalformer output (no samples.json, or other files or "
                                  "folders in it); --overwrite only replaces those: remove it yourself or pick "
                                  "another name")
    claim_output(out)
    return out


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def claim_output(out) -> None:
    """Take ``.NAME.lock`` beside ``out`` for this process; refuse when a live process holds it.

    A lock of a process that is gone is taken over. The lock is released after the folder is
    written (:func:`assembled`) or when the process exits.
    """
    out = Path(out)
    lock = _lock_path(out)
    if lock in _HELD:
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid == os.getpid():
                _HELD.add(lock)
                return
            if _alive(pid):
                raise FileExistsError(f"{out} is being written by another process (pid {pid}); wait for it to "
                                      "finish or choose another --out") from None
            lock.unlink(missing_ok=True)  # left by a process that is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        if not _HELD:
            atexit.register(release_all)
        _HELD.add(lock)
        return
    raise FileExistsError(f"{out}: could not take the lock {lock}")


def release_output(out) -> None:
    lock = _lock_path(Path(out))
    if lock in _HELD:
        _HELD.discard(lock)
        lock.unlink(missing_ok=True)


def release_all() -> None:
    """Drop every output lock this process holds (end of a command, or exit)."""
    for lock in list(_HELD):
        lock.unlink(missing_ok=True)
    _HELD.clear()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` so that cleanup code (``finally``, :func:`assembled`) runs."""
    import signal

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # not the main thread
        pass


def swap_into_place(tmp, target) -> None:
    """Rename ``tmp`` to ``target``; a previous ``target`` is moved aside first and deleted after.

    Readers see either the old folder or the new one, never a mix; if the final rename fails the
    old folder is put back.
    """
    tmp, target = Path(tmp), Path(target)
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling file and a rename: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file should follow the umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
