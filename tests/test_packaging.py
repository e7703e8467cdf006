"""A wheel built from the repository carries the Wyckoff tables and works outside the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (whl,) = out.glob("crystalformer-*.whl")
    return whl


def test_wheel_contains_tables_and_console_script(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    assert "crystalformer/_wyckoff_tables/wyckoff.json" in names
    assert "crystalformer/symmetry/tables.py" in names
    assert "crystalformer = crystalformer.cli:main" in scripts
    for kind in ("model", "refiner", "models/perov_5", "models/carbon_24"):
        for f in ("config.json", "model.safetensors"):
            assert f"crystalformer/_default/{kind}/{f}" in names, (kind, f)
    assert "crystalformer/_default/MODEL_CARD.md" in names
    assert any(n.startswith("crystalformer/_default/property/") and n.endswith("config.json") for n in names)
    assert sum(zf.getinfo(n).file_size for n in names if "/_default/" in n) < 50e6  # tens of MB at most
    assert sum(zf.getinfo(n).compress_size for n in names) < 50e6  # the wheel itself


def test_wheel_works_outside_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = (
        "import crystalformer, crystalformer.symmetry.tables as t;"
        "sg = t.space_group(227);"
        "print(crystalformer.__file__); print(t._table_path()); print(sg.symbol, sg.position('a').ops[0])"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    module_file, table_file, line = proc.stdout.strip().splitlines()
    assert Path(module_file).is_relative_to(site)
    assert Path(table_file).is_relative_to(site)
    assert line == "Fd-3m 1/8,1/8,1/8"


def test_wheel_default_model_samples_outside_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = ("import torch; torch.set_num_threads(1); import crystalformer;"
            "from crystalformer.sampling.api import sample;"
            "m = crystalformer.load_model(); r = sample(m, 4, seed=0);"
            "print(len(r.crystals), m.num_parameters())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    decoded, params = map(int, proc.stdout.split())
    assert decoded >= 1 and params > 100_000
