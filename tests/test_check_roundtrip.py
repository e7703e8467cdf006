"""scripts/check_roundtrip.py on small files: counts, failures by row and reason, atomic JSON report."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_roundtrip.py"


@pytest.fixture()
def check_roundtrip(monkeypatch):
    """The script as a module, registered in sys.modules so that worker processes can unpickle its functions."""
    spec = importlib.util.spec_from_file_location("check_roundtrip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "check_roundtrip", module)
    spec.loader.exec_module(module)
    return module


def test_report_on_a_fixture_with_bad_rows(data_dir, tmp_path):
    """10 good rows, one disordered CIF and one unreadable one: every row accounted for, by reason."""
    df = pd.read_csv(data_dir / "perov5_sample.csv").head(10)
    bad = pd.DataFrame({"material_id": ["disordered", "broken"],
                        "cif": [(data_dir / "cif" / "CuAu_disordered.cif").read_text(),
                                (data_dir / "cif" / "broken.cif").read_text()]})
    csv = tmp_path / "sample.csv"
    pd.concat([df, bad], ignore_index=True).to_csv(csv, index=False)
    out = tmp_path / "reports" / "report.json"  # the folder does not exist yet

    run = subprocess.run([sys.executable, str(SCRIPT), "--csv", str(csv), "--json", str(out), "--workers", "2"],
                         capture_output=True, text=True, check=True)

    report = json.loads(out.read_text())
    assert report["settings"]["symprec"] == 0.01
    (r,) = report["files"]
    assert (r["total"], r["ordered"], r["converted"], r["matched"]) == (12, 10, 10, 10)
    assert r["match_fraction"] == 1.0 and r["space_group_preserved_strict"] == 10
    assert r["median_ms"] > 0
    failures = {f["material_id"]: f for f in r["failures"]}
    assert failures["disordered"]["reason"] == "disordered" and failures["disordered"]["row"] == 10
    assert failures["broken"]["reason"] == "parse" and failures["broken"]["row"] == 11
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    assert "sample.csv" in run.stdout and "100.00" in run.stdout


def test_one_worker_gives_the_same_counts(check_roundtrip, data_dir):
    one = check_roundtrip.check_file(data_dir / "mp20_sample.csv", 0.01, 5.0, workers=1, chunk=7)
    two = check_roundtrip.check_file(data_dir / "mp20_sample.csv", 0.01, 5.0, workers=2, chunk=7)
    for key in ("total", "ordered", "converted", "matched", "space_group_preserved", "failures"):
        assert one[key] == two[key], key
    assert one["matched"] == one["total"] == 30
