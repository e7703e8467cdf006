"""The on-disk cache of reference analyses: same results as computing, keyed by content and settings, robust."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crystalformer.evaluation import runner
from crystalformer.evaluation.analysis import Entry
from crystalformer.evaluation.cache import (cache_dir_of, default_cache_dir, load_results, path_sha256,
                                            save_results)
from crystalformer.evaluation.runner import analyze_reference, evaluate_generation

DATA = Path(__file__).parent / "data"
BROKEN_CIF = "data_x\n_cell_length_a 1\n"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CRYSTALFORMER_CACHE", str(folder))
    return folder


@pytest.fixture
def reference(tmp_path) -> Path:
    """Three perov_5 crystals and one row whose CIF does not parse (no fingerprint, no cell)."""
    df = pd.read_csv(DATA / "perov5_sample.csv").head(3)
    df = pd.concat([df, pd.DataFrame({"material_id": ["broken"], "cif": [BROKEN_CIF]})], ignore_index=True)
    path = tmp_path / "reference.csv"
    df.to_csv(path, index=False)
    return path


def assert_same_results(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            if k == "reduced" and x[k] is not None:
                assert x[k].as_dict() == y[k].as_dict()
            elif isinstance(x[k], np.ndarray) or isinstance(y[k], np.ndarray):
                np.testing.assert_array_equal(x[k], y[k])  # NaN where NaN
                assert np.asarray(x[k]).dtype == np.asarray(y[k]).dtype
            else:
                assert x[k] == y[k], k


def test_cached_analysis_is_the_computed_one_and_skips_fingerprinting(cache, reference, monkeypatch, capsys):
    plain = analyze_reference(reference, progress=False, cache=False)
    assert plain.cache_path is None and not cache.exists()
    cold = analyze_reference(reference)
    assert not cold.from_cache and Path(cold.cache_path).parent == cache
    assert "computed and cached in " + cold.cache_path in capsys.readouterr().err
    calls = []
    real = runner.analyze_all
    monkeypatch.setattr(runner, "analyze_all", lambda entries, *a, **k: calls.append(a) or real(entries, *a, **k))
    warm = analyze_reference(reference)
    assert warm.from_cache and warm.cache_path == cold.cache_path and not calls
    assert "read from the cache " + cold.cache_path in capsys.readouterr().err
    assert_same_results(plain.results, cold.results)
    assert_same_results(cold.results, warm.results)
    assert warm.results[-1]["failures"].keys() == {"parse"} and warm.results[-1]["struct_fp"] is None
    # a whole evaluation against the same file reads it too, with the same metrics
    samples = reference.with_name("samples.csv")
    pd.read_csv(reference).head(2).to_csv(samples, index=False)
    first = evaluate_generation(samples, reference, dataset="perov_5", progress=False, cache=False)
    second = evaluate_generation(samples, reference, dataset="perov_5", progress=False)
    assert [a[-1] for a in calls] == ["samples", "reference", "samples"]  # cached: no second reference analysis
    assert first["metrics"] == second["metrics"] and first["failures"] == second["failures"]


def test_nan_and_missing_fingerprints_round_trip(tmp_path):
    fp = np.array([0.5, np.nan, 1e-300, -0.0])
    rows = [{"name": f"r{i}", "material_id": None, "rank": None, "parsed": i != 1, "struct_valid": True,
             "comp_valid": False, "valid": False, "density": 1.0 / 3 if i else float("nan"), "n_elements": np.int64(2),
             "n_atoms": 5, "space_group": 221, "failures": {} if i != 1 else {"parse": "bad"},
             "struct_fp": None if i == 1 else fp * i, "comp_fp": None if i == 2 else np.full(3, np.nan),
             "structure": None, "reduced": None} for i in range(3)]
    key = {"k": 1}
    save_results(tmp_path / "x.npz", key, rows)
    back = load_results(tmp_path / "x.npz", key)
    assert back[0]["density"] != back[0]["density"]  # NaN
    back[0]["density"] = rows[0]["density"] = 0.0
    assert_same_results([{**r, "n_elements": int(r["n_elements"])} for r in rows], back)
    assert load_results(tmp_path / "x.npz", {"k": 2}) is None  # another key's file
    assert not list(tmp_path.glob("*.tmp"))


def test_key_follows_content_and_settings_not_the_path(cache, reference, tmp_path):
    first = analyze_reference(reference, coverage=False, progress=False).cache_path
    copy = tmp_path / "elsewhere" / "copy.csv"
    copy.parent.mkdir()
    shutil.copy(reference, copy)
    hit = analyze_reference(copy, coverage=False, progress=False)
    assert hit.from_cache and hit.cache_path == first
    df = pd.read_csv(reference)
    df.loc[0, "material_id"] = "renamed"
    df.to_csv(copy, index=False)
    assert path_sha256(copy) != path_sha256(reference)
    changed = analyze_reference(copy, coverage=False, progress=False)
    assert not changed.from_cache and changed.cache_path != first
    others = {analyze_reference(reference, progress=False, **kw).cache_path
              for kw in ({"symprec": 0.01, "coverage": False}, {"novelty": False, "coverage": False},
                         {"max_reference": 2, "coverage": False}, {"max_reference": 2, "seed": 1, "coverage": False})}
    assert len(others) == 4 and first not in others


def test_folder_key_covers_names_and_bytes(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for name in ("NaCl.cif", "CuAu_disordered.cif"):
        shutil.copy(DATA / "cif" / name, folder / name)
    before = path_sha256(folder)
    (folder / "NaCl.cif").rename(folder / "salt.cif")
    renamed = path_sha256(folder)
    (folder / "salt.cif").write_text((folder / "salt.cif").read_text() + "\n")
    assert len({before, renamed, path_sha256(folder)}) == 3


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a zip", None])
def test_a_damaged_cache_file_is_recomputed_and_rewritten(cache, reference, damage, capsys):
    cold = analyze_reference(reference, coverage=False)
    path = Path(cold.cache_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage is None else damage)
    capsys.readouterr()
    again = analyze_reference(reference, coverage=False)
    assert not again.from_cache and "replacing an unreadable cache file" in capsys.readouterr().err
    assert_same_results(cold.results, again.results)
    assert analyze_reference(reference, coverage=False, progress=False).from_cache
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*"))


def test_entries_are_keyed_by_their_content(cache):
    df = pd.read_csv(DATA / "perov5_sample.csv").head(2)
    entries = [Entry(m, c) for m, c in zip(df["material_id"], df["cif"])]
    first = analyze_reference(entries, coverage=False, progress=False)
    assert analyze_reference(list(entries), coverage=False, progress=False).from_cache
    other = analyze_reference([Entry("x", entries[0].cif)] + entries[1:], coverage=False, progress=False)
    assert not other.from_cache and other.cache_path != first.cache_path


def test_cache_folder_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALFORMER_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" and cache_dir_of(True) == tmp_path / "c"
    monkeypatch.delenv("CRYSTALFORMER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "crystalformer" / "fingerprints"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "crystalformer" / "fingerprints"
    assert cache_dir_of(False) is None and cache_dir_of(tmp_path / "d") == tmp_path / "d"


def run_cli(argv: list[str]) -> int:
    import argparse

    from crystalformer.evaluation.cli import add_parser

    parser = argparse.ArgumentParser(prog="crystalformer")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_no_cache_writes_nothing(cache, reference, tmp_path, capsys):
    samples = tmp_path / "samples.csv"
    pd.read_csv(reference).head(1).to_csv(samples, index=False)
    argv = ["evaluate", "generation", "--samples", str(samples), "--reference", str(reference), "--no-report",
            "--dataset", "perov_5", "--no-coverage"]
    assert run_cli(argv + ["--json", str(tmp_path / "a.json"), "--no-cache"]) == 0
    assert not cache.exists() and "cache" not in capsys.readouterr().err
    assert run_cli(argv + ["--json", str(tmp_path / "b.json")]) == 0
    assert len(list(cache.glob("reference-*.npz"))) == 1 and "computed and cached" in capsys.readouterr().err
    assert run_cli(argv + ["--json", str(tmp_path / "c.json"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    a, c = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ac")
    assert a["metrics"] == c["metrics"]
