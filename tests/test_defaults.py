"""The models shipped in crystalformer/_default/ load without a path and serve every command."""

from __future__ import annotations

import json

import pytest

from crystalformer.cli import main
from crystalformer.defaults import ROOT, default_dir, shipped


def test_shipped_models_are_present_and_documented():
    assert shipped("model") == ["model"] and shipped("refiner") == ["refiner"]
    assert shipped("property"), "no shipped property model"
    card = (ROOT / "MODEL_CARD.md").read_text()
    for word in ("Training data", "crystalformer train", "val", "Validation NLL"):
        assert word in card
    meta = json.loads((default_dir("model") / "metadata.json").read_text())
    assert meta["num_parameters"] > 100_000 and meta["metrics"]["val/nll"] < 20


def test_load_model_without_path_is_the_shipped_model():
    from crystalformer import load_model

    a, b = load_model(), load_model(default_dir("model"))
    assert all((p == q).all() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_default_dir_names_what_is_missing():
    with pytest.raises(FileNotFoundError, match="no_such_target.*--property"):
        default_dir("property", "no_such_target")
    with pytest.raises(ValueError, match="unknown kind"):
        default_dir("tokenizer")


def test_cli_sample_without_model_and_with_shipped_refiner(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--n", "4", "--out", str(out), "--quiet", "--refine"]) == 0
    data = json.loads((out / "samples.json").read_text())
    assert data["meta"]["model"] == "default" and data["meta"]["refiner"] == "default"
    assert len(list(out.glob("*.cif"))) == data["counts"]["written"] >= 1
    assert "space group" in capsys.readouterr().out  # the printed table
