"""Output folders: all or nothing, never someone else's folder, one writer at a time, no leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crystalformer.atomic import assembled, check_output_folder, claim_output, release_output, temporary_sibling


def _output(folder: Path) -> Path:
    folder.mkdir()
    (folder / "samples.json").write_text(json.dumps({"samples": []}))
    (folder / "sample_00000.cif").write_text("data_x\n")
    return folder


def test_overwrite_replaces_only_crystalformer_outputs(tmp_path):
    ours = _output(tmp_path / "ours")
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        check_output_folder(ours, overwrite=False)
    assert check_output_folder(ours, overwrite=True) == ours
    release_output(ours)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a crystalformer output"):
        check_output_folder(theirs, overwrite=True)
    nested = _output(tmp_path / "nested")
    (nested / "sub").mkdir()
    with pytest.raises(FileExistsError, match="not a crystalformer output"):
        check_output_folder(nested, overwrite=True)
    assert (theirs / "thesis.tex").read_text() == "years of work"


def test_refuses_cwd_home_empty_name_symlink_and_files(tmp_path, monkeypatch):
    cwd = _output(tmp_path / "here")
    monkeypatch.chdir(cwd)
    with pytest.raises(FileExistsError, match="current, home or root"):
        check_output_folder(Path("."), overwrite=True)
    with pytest.raises(ValueError, match="--out is empty"):
        check_output_folder("", overwrite=True)
    target = _output(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(NotADirectoryError, match="symbolic link"):
        check_output_folder(link, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        check_output_folder(tmp_path / "file", overwrite=True)


def test_a_second_live_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".out.lock").write_text(str(holder.pid))
        with pytest.raises(FileExistsError, match=f"another process \\(pid {holder.pid}\\)"):
            claim_output(out)
    finally:
        holder.kill()
        holder.wait()
    claim_output(out)  # the holder is gone: its lock is stale
    assert (tmp_path / ".out.lock").read_text() == str(os.getpid())
    release_output(out)
    assert not (tmp_path / ".out.lock").exists()


def test_failed_write_leaves_nothing_and_stale_temporaries_are_removed(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with assembled(out) as tmp:
            (tmp / "a.cif").write_text("x")
            raise RuntimeError("disk full")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.tmp-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "x.cif").write_text("x")
    fresh = temporary_sibling(out)
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_writing_leaves_no_temporary_folder(tmp_path, sig):
    """A sample run interrupted (Ctrl-C) or terminated while it writes CIFs: no .out.tmp-* and no lock remain."""
    code = f"""
import time
import crystalformer.sampling.output as output
from crystalformer.cli import main
real = output.structure_checks
def slow(crystal):
    time.sleep(0.5)
    return real(crystal)
output.structure_checks = slow
raise SystemExit(main(["sample", "--n", "8", "--out", {str(tmp_path / 'out')!r}, "--quiet"]))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".out.tmp-*/*.cif")):  # the writing phase
        time.sleep(0.05)
    assert list(tmp_path.glob(".out.tmp-*/*.cif")), proc.communicate(timeout=5)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert [p.name for p in tmp_path.iterdir()] == []


def test_written_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with assembled(tmp_path / "out") as tmp:
            (tmp / "samples.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_unwritable_output_is_one_line(tmp_path, monkeypatch, capsys):
    """A folder the user cannot write (simulated: root ignores permissions) gives one line, exit 1."""
    import crystalformer.atomic as atomic
    from crystalformer.cli import main

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse)
    assert main(["sample", "--n", "2", "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"crystalformer: error: {tmp_path}: Permission denied"
