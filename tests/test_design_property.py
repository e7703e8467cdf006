"""Property models (train, save, load, errors) and the design command end to end on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crystalformer import CrystalTokenizer, ModelConfig
from crystalformer.cli import main
from crystalformer.inverse.api import UnreachableTargetError, design
from crystalformer.inverse.property import (
    PropertyConfig,
    PropertyModel,
    PropertyNet,
    gaussian_sigma,
    load_property_model,
)
from crystalformer.inverse.train import train_property
from crystalformer.model import CrystalFormer
from crystalformer.sampling.api import sample


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    torch.manual_seed(0)
    model = CrystalFormer(ModelConfig.from_name("tiny", n_max=4), CrystalTokenizer()).eval()
    with torch.no_grad():
        model.token_head.bias[model.tokenizer.id("[STOP]")] += 2.0
    path = tmp_path_factory.mktemp("prior") / "m"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def heat_model(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prop") / "heat"
    result = train_property(data_dir / "perov5_sample.csv", "heat_ref", out, PropertyConfig.from_name("tiny"),
                            cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return result, out


def test_property_model_trains_saves_and_loads(heat_model, data_dir):
    result, out = heat_model
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "metadata.json"}
    meta = json.loads((out / "metadata.json").read_text())
    for key in ("target", "mean", "std", "sigma", "val_mae", "baseline_mae", "coverage_1sigma", "train_quantiles"):
        assert key in meta
    assert meta["target"] == "heat_ref" and result.sigma > 0 and np.isfinite(result.val_mae)
    model = load_property_model(out)
    from tests.conftest import load_fixture_crystals

    crystals = [c for _, c in load_fixture_crystals("perov5_sample.csv")[:5]]
    again = load_property_model(out).predict(crystals)
    assert np.allclose(model.predict(crystals), again) and again.shape == (5,)


def test_sigma_calibration_covers_the_stated_fraction():
    r = np.random.default_rng(0).normal(0, 0.3, 20000)
    assert gaussian_sigma(r, 0.6827) == pytest.approx(0.3, rel=0.03)
    s90 = gaussian_sigma(r, 0.9)  # the interval ±1.645 sigma covers 90%, and sigma is still the Gaussian's
    assert s90 == pytest.approx(0.3, rel=0.03)
    assert np.mean(np.abs(r) <= 1.6449 * s90) == pytest.approx(0.9, abs=0.005)


def test_unknown_and_non_numeric_columns_are_refused(data_dir, tmp_path, capsys):
    args = ["train-property", "--data", str(data_dir / "perov5_sample.csv"), "--preset", "tiny", "--quiet",
            "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--target", "band_gapp", "--out", str(tmp_path / "a")]) == 2
    assert "band_gapp" in capsys.readouterr().err
    assert main([*args, "--target", "formula", "--out", str(tmp_path / "b")]) == 2
    assert "not numeric" in capsys.readouterr().err


def test_unreachable_targets_stop_with_the_best_value(prior, heat_model):
    model, _ = prior
    pm = load_property_model(heat_model[1])
    with pytest.raises(UnreachableTargetError, match="outside what the property model"):
        design(model, [pm], "heat_ref=500+-0.1", n=2, steps=1)
    with pytest.raises(UnreachableTargetError, match="best") as info:  # reachable in principle, not in 2 steps
        design(model, [pm], f"heat_ref={pm.quantile(0.5) + 1e-3}+-1e-9", n=3, steps=2, plausible=False)
    assert info.value.result is not None and len(info.value.result.samples) == 3
    with pytest.raises(ValueError, match="no property model"):
        design(model, [pm], "band_gap=min", n=2, steps=1)


def test_nan_predictions_are_reported(prior):
    model, _ = prior
    net = PropertyNet(PropertyConfig.from_name("tiny"), model.tokenizer)
    with torch.no_grad():
        net.head[-1].bias.fill_(float("nan"))
    pm = PropertyModel(net, {"target": "x", "mean": 0.0, "std": 1.0, "sigma": 1.0, "train_quantiles": [0.0, 1.0]})
    with pytest.raises(ValueError, match="predicts nan"):
        design(model, [pm], "x=min", n=2, steps=1, plausible=False)


def test_design_command_writes_ranked_designs(prior, heat_model, tmp_path):
    _, prior_path = prior
    out = tmp_path / "d"
    code = main(["design", "--model", str(prior_path), "--property", str(heat_model[1]), "--target", "heat_ref=min",
                 "--n", "4", "--steps", "3", "--out", str(out), "--quiet", "--beta-start", "0.3", "--device", "cpu",
                 "--atoms", "4-12", "--allow-implausible"])
    assert code == 0
    data = json.loads((out / "samples.json").read_text())
    rows = data["samples"]
    assert [r["rank"] for r in rows] == list(range(4))
    assert all("heat_ref" in r["predicted"] for r in rows)
    assert all(4 <= r["num_atoms"] <= 12 for r in rows)  # --atoms, enforced by the grammar in every move
    assert data["meta"]["proposed"] and "acceptance" in data["meta"]
    scores = [(not r["meets_targets"], -r["log_target"]) for r in rows]
    assert scores == sorted(scores)
    assert main(["design", "--model", str(prior_path), "--property", str(heat_model[1]), "--target", "heat_ref=min",
                 "--n", "4", "--steps", "1", "--out", str(out), "--quiet"]) == 2  # refuses to overwrite


def test_several_targets_multiply_their_likelihoods(prior, heat_model):
    """Two properties at once: the chains' log-likelihood is the sum of both targets' terms."""
    from crystalformer.inverse.targets import parse_target

    model, _ = prior
    heat = load_property_model(heat_model[1])
    other = load_property_model(heat_model[1])
    other.metadata.update(target="heat_all", sigma=2 * heat.sigma)
    result = design(model, [heat, other], ["heat_ref=min", f"heat_all={heat.quantile(0.5):.3f}+-0.5"], n=3, steps=2,
                    plausible=False,
                    require_reached=False)
    assert set(result.predictions) == {"heat_ref", "heat_all"}
    t1 = parse_target("heat_ref=min").resolve(heat)
    t2 = parse_target(f"heat_all={heat.quantile(0.5):.3f}+-0.5")
    expected = (t1.log_likelihood(result.predictions["heat_ref"], heat.sigma)
                + t2.log_likelihood(result.predictions["heat_all"], other.sigma))
    assert np.allclose(result.log_target, expected, atol=1e-6)
    assert result.summary()["acceptance"]["all"] is not None


def test_finetune_command_writes_a_loadable_prior(prior, heat_model, tmp_path):
    from crystalformer.model import load_model
    from crystalformer.model.files import read_metadata

    _, prior_path = prior
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(prior_path), "--property", str(heat_model[1]), "--target",
                 "heat_ref=min", "--steps", "2", "--batch-size", "4", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    tuned = load_model(out)
    assert len(read_metadata(out)["history"]) >= 1
    assert sample(tuned, 2, seed=0).samples


def test_designs_have_plausible_contacts_by_default(tmp_path, capsys):
    """The shipped perov_5 prior and heat_ref model: every chain starts and stays among crystals whose
    closest atoms are at least 0.7 x the sum of their covalent radii."""
    out = tmp_path / "d"
    code = main(["design", "--model", "perov_5", "--target", "heat_ref=min", "--n", "4", "--steps", "3",
                 "--out", str(out), "--quiet"])
    assert code in (0, 1)
    data = json.loads((out / "samples.json").read_text())
    assert all(r["plausible_contacts"] for r in data["samples"])
    assert data["meta"]["plausible_contacts_only"] is True
    text = capsys.readouterr().out
    assert "implausible contacts" in text and "next:" in text
