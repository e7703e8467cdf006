"""samples.json: one writer and one reader for every command."""

from __future__ import annotations

import json

import pytest

from crystalformer.samples_file import read_samples_file, write_samples_file


def test_round_trip_keeps_meta_counts_rows_and_extra_keys(tmp_path):
    rows = [{"file": "a.cif", "energy": -1.5}, {"file": None, "error": "too_close: 0.2 Å"}]
    f = write_samples_file(tmp_path, {"command": "relax", "path": tmp_path}, {"written": 1}, rows, skipped=[{"x": 1}])
    assert json.loads(f.read_text())["skipped"] == [{"x": 1}]  # plain JSON any tool can read
    back = read_samples_file(tmp_path)
    assert back.rows == rows and back.counts == {"written": 1} and back.meta["command"] == "relax"
    assert back.meta["path"] == str(tmp_path) and back.extra == {"skipped": [{"x": 1}]}


def test_a_bare_list_is_read_and_bad_files_are_named(tmp_path):
    (tmp_path / "samples.json").write_text(json.dumps([{"file": "a.cif"}]))
    assert read_samples_file(tmp_path / "samples.json").rows == [{"file": "a.cif"}]
    (tmp_path / "samples.json").write_text("{broken")
    with pytest.raises(ValueError, match="samples.json: not valid JSON"):
        read_samples_file(tmp_path)
    (tmp_path / "samples.json").write_text(json.dumps({"samples": [1, 2]}))
    with pytest.raises(ValueError, match="expected a list of sample rows"):
        read_samples_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="no samples.json"):
        read_samples_file(tmp_path / "elsewhere")
