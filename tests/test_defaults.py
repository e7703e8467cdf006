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


def test_named_models_resolve_and_paths_still_win(tmp_path, monkeypatch):
    from crystalformer import load_model
    from crystalformer.defaults import DEFAULT_MODEL, resolve_model, shipped_models

    models = shipped_models()
    assert DEFAULT_MODEL in models and models[DEFAULT_MODEL] == default_dir("model")
    assert {"perov_5", "carbon_24"} <= set(models)
    for name, path in models.items():
        assert resolve_model(name) == path
        meta = json.loads((path / "metadata.json").read_text())
        assert meta["num_parameters"] > 100_000 and "val/nll" in meta["metrics"]
    assert resolve_model(None) == default_dir("model")
    assert load_model("perov_5").config == load_model(models["perov_5"]).config
    local = tmp_path / "perov_5"  # a folder of the same name in the working directory is taken as a path
    load_model("mp_20").save(local)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("perov_5").resolve() == local
    data_folder = tmp_path / "carbon_24"  # e.g. `crystalformer data download` output: not a model
    data_folder.mkdir()
    assert resolve_model("carbon_24") == models["carbon_24"]
    with pytest.raises(FileNotFoundError, match="no shipped model of that name.*carbon_24"):
        resolve_model("no_such_model")


def test_cli_models_lists_every_shipped_model(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for name in ("mp_20 (default)", "perov_5", "carbon_24", "MODEL_CARD.md", "sites (default), pairs"):
        assert name in text
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"].split()[0] for r in rows} >= {"mp_20", "perov_5", "carbon_24"}


def test_cli_sample_with_a_named_model_and_a_bad_name(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--model", "perov_5", "--n", "3", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "samples.json").read_text())["meta"]["model"] == "perov_5"
    assert main(["sample", "--model", "perov_6", "--n", "3", "--out", str(tmp_path / "t"), "--quiet"]) == 2
    assert "perov_6" in capsys.readouterr().err
