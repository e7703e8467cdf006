"""Training: a tiny model learns, runs resume where they stopped, NaN stops cleanly, the CLI works."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from crystalformer import ModelConfig, TrainConfig
from crystalformer.cli import main
from crystalformer.config import apply_overrides
from crystalformer.datamodule import collate
from crystalformer.lit import NonFiniteLossError, lr_factor
from crystalformer.model import CrystalFormer, load_model
from crystalformer.train import train


def test_tiny_model_overfits_32_crystals(fixture_crystals):
    from crystalformer import CrystalTokenizer

    tokenizer = CrystalTokenizer()
    crystals = [c for _, c in fixture_crystals][:32]
    assert len(crystals) == 32
    torch.manual_seed(0)
    model = CrystalFormer(ModelConfig.from_name("tiny", d_model=64, n_layer=2), tokenizer)
    examples = []
    for c in crystals:
        e = tokenizer.encode(c)
        examples.append({"ids": e.ids, "values": e.values, "slots": e.slots, "num_atoms": e.num_atoms})
    batch = collate(examples, tokenizer.pad_id, grammar=model.grammar)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(model.loss(batch)[0])
    for _ in range(100):
        optimizer.zero_grad()
        loss, _ = model.loss(batch)
        loss.backward()
        optimizer.step()
    last = float(model.loss(batch)[0])
    assert last < first - 30, (first, last)  # nats per crystal: ~46 at the start, ~0 after 100 steps


def test_lr_schedule_warms_up_then_decays_to_floor():
    cfg = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.1)
    values = [lr_factor(s, 100, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_overrides_convert_and_reject_unknown_fields():
    m, t = apply_overrides(ModelConfig(), TrainConfig(), {"n_layer": "3", "lr": "1e-4", "model": {"d_model": 64}})
    assert (m.n_layer, m.d_model, t.lr) == (3, 64, 1e-4)
    with pytest.raises(ValueError, match="unknown config field 'n_layers'"):
        apply_overrides(ModelConfig(), TrainConfig(), {"n_layers": 3})


def _tiny(**overrides):
    return TrainConfig.from_name("tiny", **overrides)


def test_train_writes_run_and_model_and_resume_continues(data_dir, tmp_path):
    out = tmp_path / "run"
    data = data_dir / "mp20_sample.csv"
    first = train([data], out, ModelConfig.from_name("tiny"), _tiny(max_epochs=2, log_every_steps=1), val_fraction=0.2,
                  cache_dir=tmp_path / "cache", progress=False)
    assert first.steps == 2 * 2 and first.best_val_nll is not None  # 24 crystals / batch 16 -> 2 steps per epoch
    model = load_model(out / "model")
    meta = json.loads((out / "model" / "metadata.json").read_text())
    assert meta["num_train"] == 24 and meta["num_val"] == 6 and "val/nll" in meta["metrics"]
    rows = list(csv.DictReader(open(out / "logs" / "version_0" / "metrics.csv")))
    assert any(r["val/nll_element"] for r in rows) and any(r["train/nll"] for r in rows)
    assert model.num_parameters() == first.num_parameters

    with pytest.raises(FileExistsError, match="not empty"):
        train([data], out, ModelConfig.from_name("tiny"), _tiny(), cache_dir=tmp_path / "cache", progress=False)
    resumed = train([], out, train_config=_tiny(max_epochs=3, log_every_steps=1), resume=True, cache_dir=tmp_path / "cache",
                    progress=False)
    assert resumed.steps == 3 * 2  # continued from step 4, not from 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["total_wall_s"] > summary["wall_s"]  # both starts counted


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = CrystalFormer.loss

    def poisoned(self, batch):
        loss, lp = original(self, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 3 else loss), lp

    monkeypatch.setattr(CrystalFormer, "loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 3"):
        train([data_dir / "mp20_sample.csv"], out, ModelConfig.from_name("tiny"), _tiny(max_epochs=5),
              val_fraction=0.2, cache_dir=tmp_path / "cache", progress=False, checkpoint_every=1)
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_cli_train_tiny_with_overrides(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    yaml_file = tmp_path / "o.yaml"
    yaml_file.write_text("model:\n  n_layer: 1\nmax_epochs: 1\n")
    code = main(["train", "--preset", "tiny", "--data", str(data_dir / "perov5_sample.csv"), "--out", str(out),
                 "--config", str(yaml_file), "--set", "batch_size=8", "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "best val NLL" in text and "parameters" in text
    assert load_model(out / "model").config.n_layer == 1
    assert json.loads((out / "run.json").read_text())["train"]["batch_size"] == 8
    assert main(["train", "--preset", "tiny", "--data", str(data_dir / "nope.csv"), "--out", str(out)]) == 2
    assert main(["train", "--data", str(data_dir / "perov5_sample.csv"), "--out", str(out), "--set", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err and "bogus" in err
