"""scripts/gpu_train.sh packs prepared data and trains where the crystal stack is not installed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crystalformer.data import prepare

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_train.sh"

# imported first by every Python started with this folder on its path: the crystal stack is "not installed"
BLOCKER = '''
import importlib.abc, sys
class _NoCrystalStack(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("pymatgen", "spglib", "pyxtal", "ase", "smact", "matminer"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _NoCrystalStack())
'''


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("gpu")
    prepare([data_dir / "mp20_sample.csv"], root / "mp20", progress=False)
    prepare([data_dir / "perov5_sample.csv"], root / "perov5", progress=False)
    return root


def _env(tmp_path: Path) -> dict:
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(blocker), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return env


def test_pack_then_run_trains_without_the_crystal_stack(prepared, tmp_path):
    env = _env(tmp_path)
    check = subprocess.run([sys.executable, "-c", "import pymatgen"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked by the test" in check.stderr  # the blocker works
    pack = tmp_path / "pack"
    subprocess.run(["bash", str(SCRIPT), "pack", str(pack), "--train", str(prepared / "mp20"),
                    "--val", str(prepared / "mp20"), "--val", str(prepared / "perov5")], check=True, env=env)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "run", str(pack), str(out), "0.05", "tiny", "--", "--set",
                           "max_epochs=2"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "model", "summary.json", "train.log",
                                                     "val_nll.json"]
    assert (out / "model" / "model.safetensors").is_file()
    nll = json.loads((out / "val_nll.json").read_text())["nll"]
    assert set(nll) == {"mp20", "perov5"}
    assert all(rows["p(X)"]["n"] > 0 and math.isfinite(rows["p(X)"]["nll"]) for rows in nll.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] >= 1 and summary["num_parameters"] > 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)  # what a device call returns


def test_pack_refuses_folders_that_are_not_prepared(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    done = subprocess.run(["bash", str(SCRIPT), "pack", str(tmp_path / "p"), "--train", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not a prepared directory" in done.stderr
    assert not (tmp_path / "p").exists()


BENCH_GPU = REPO / "scripts" / "bench_gpu.py"


@pytest.mark.parametrize("stack", [False, True], ids=["no crystal stack", "crystal stack"])
def test_gpu_benchmark_runs_on_cpu_with_a_tiny_batch(tmp_path, stack):
    """The one-command device benchmark, checked here on the CPU: decoding alone without the crystal stack."""
    env = _env(tmp_path) if not stack else {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(BENCH_GPU), "--out", str(out), "--device", "cpu", "--batches", "4", "8",
                           "--presets", "tiny", "--repeats", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "bench_gpu.json").read_text())
    assert report["crystal_stack"] is stack and report["skipped"] == []
    assert [(r["model"], r["batch"]) for r in report["results"]] == [
        ("shipped model", 4), ("shipped model", 8), ("tiny (random)", 4), ("tiny (random)", 8)]
    assert all(r["decode_crystals_per_s"] > 0 for r in report["results"])
    assert all(("cif_per_s" in r) is stack for r in report["results"])
