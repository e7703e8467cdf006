"""Every model directory through one module: round trips, foreign and outdated folders, damage."""

from __future__ import annotations

import json

import pytest
import torch

from crystalformer import CrystalTokenizer, ModelConfig
from crystalformer.artifacts import MODEL, PROPERTY, REFINER, ArtifactError, read_artifact
from crystalformer.inverse.property import PropertyConfig, PropertyModel, PropertyNet, load_property_model
from crystalformer.model import CrystalFormer, load_model, save_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    tok = CrystalTokenizer()
    model = CrystalFormer(ModelConfig.from_name("tiny"), tok).eval()
    save_model(model, root / "model", {"note": "test"})
    net = PropertyNet(PropertyConfig.from_name("tiny"), tok)
    PropertyModel(net, {"target": "x", "mean": 0.0, "std": 1.0, "sigma": 1.0}).save(root / "property")
    return root, model, net


def test_each_kind_round_trips_through_one_format(folders):
    root, model, net = folders
    for name, kind in (("model", MODEL), ("property", PROPERTY)):
        data = json.loads((root / name / "config.json").read_text())
        assert data["format"] == kind.format and data["format_version"] == kind.version and kind.section in data
    loaded = load_model(root / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert read_artifact(root / "model", MODEL).metadata["note"] == "test"
    prop = load_property_model(root / "property")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), prop.net.state_dict().values()))


def test_a_folder_of_another_kind_is_named(folders):
    root, _, _ = folders
    with pytest.raises(ArtifactError, match="holds a crystalformer property model, not a model"):
        load_model(root / "property")
    with pytest.raises(ArtifactError, match="holds a crystalformer model, not a property model"):
        load_property_model(root / "model")
    with pytest.raises(FileNotFoundError, match="not a crystalformer refiner directory|no such refiner"):
        read_artifact(root / "nowhere", REFINER)


@pytest.mark.parametrize("edit, phrase", [
    (lambda d: d.update(format_version=99), "a model of format 99: this package reads format 1"),
    (lambda d: d.update(format="something-else"), "not a crystalformer model config"),
    (lambda d: d.pop("model"), 'has no "model" section'),
])
def test_damaged_or_future_configs_are_one_line_errors(folders, tmp_path, edit, phrase):
    import shutil

    root, _, _ = folders
    copy = tmp_path / "m"
    shutil.copytree(root / "model", copy)
    data = json.loads((copy / "config.json").read_text())
    edit(data)
    (copy / "config.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=phrase) as info:
        load_model(copy)
    assert "\n" not in str(info.value)


def test_outdated_refiner_format_says_what_to_do(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": "crystalformer-refiner/1", "network": {}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match="train it again with `crystalformer train-refiner`"):
        read_artifact(tmp_path, REFINER)


def test_truncated_weights_are_named(folders, tmp_path):
    import shutil

    root, _, _ = folders
    copy = tmp_path / "p"
    shutil.copytree(root / "property", copy)
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_property_model(copy)


def test_the_shipped_refiner_in_the_older_layout_still_loads(tmp_path):
    """The refiner shipped before the common layout (format "crystalformer-refiner/2", fields at the top)."""
    from crystalformer.refinement.io import load_refiner, save_refiner

    from crystalformer.defaults import shipped_refiners

    shipped = shipped_refiners()["pairs"]
    assert json.loads((shipped / "config.json").read_text())["format"] == "crystalformer-refiner/2"
    old = load_refiner(shipped)
    save_refiner(old, tmp_path / "r")
    new = load_refiner(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["format_version"] == REFINER.version
    assert old.config == new.config
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


def test_a_refiner_passed_as_a_model_is_named_before_missing_files(tmp_path):
    from crystalformer.defaults import default_dir

    with pytest.raises(ArtifactError, match="holds a crystalformer refiner, not a model"):
        load_model(default_dir("refiner"))


def test_a_property_model_needs_its_metadata(folders, tmp_path):
    import shutil

    root, _, _ = folders
    copy = tmp_path / "p"
    shutil.copytree(root / "property", copy)
    (copy / "metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing metadata.json"):
        load_property_model(copy)
