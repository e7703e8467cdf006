"""The command line end to end."""

from __future__ import annotations

import subprocess
import sys

from crystalformer.cli import main
from crystalformer.data import load_prepared


def test_data_prepare(data_dir, tmp_path, capsys):
    out = tmp_path / "prep"
    assert main(["data", "prepare", "--csv", str(data_dir / "perov5_sample.csv"), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "kept" in text and "built" in text
    assert len(load_prepared(out)) == 20
    assert main(["data", "prepare", "--csv", str(data_dir / "perov5_sample.csv"), "--out", str(out), "--quiet"]) == 0
    assert "reused" in capsys.readouterr().out


def test_errors_exit_2(tmp_path, capsys):
    assert main(["data", "prepare", "--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert main(["data", "prepare", "--out", str(tmp_path / "o")]) == 2


def test_module_entry_point(data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crystalformer", "data", "prepare", "--cif", str(data_dir / "cif"),
                           "--out", str(tmp_path / "o"), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "skipped: disordered" in proc.stdout and "skipped.jsonl" in proc.stdout
    version = subprocess.run([sys.executable, "-m", "crystalformer", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("crystalformer ")
