"""All-or-nothing folder writes: assemble under a temporary sibling, then swap it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def temporary_sibling(target) -> Path:
    """A new empty folder next to ``target`` (same file system, so the final rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


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
