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
                 "--config", str(yaml_file), "--set", "batch_size=8", "--cache-dir", str(tmp_path / "c"), "--quiet",
                 "--device", "cpu"])
    assert code == 0
    assert json.loads((out / "run.json").read_text())["train"]["accelerator"] == "cpu"
    text = capsys.readouterr().out
    assert "best val NLL" in text and "parameters" in text
    assert load_model(out / "model").config.n_layer == 1
    assert json.loads((out / "run.json").read_text())["train"]["batch_size"] == 8
    assert main(["train", "--preset", "tiny", "--data", str(data_dir / "nope.csv"), "--out", str(out)]) == 2
    assert main(["train", "--data", str(data_dir / "perov5_sample.csv"), "--out", str(out), "--set", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err and "bogus" in err


def test_lr_schedule_follows_the_time_budget_when_it_is_further_along():
    cfg = TrainConfig(warmup_steps=0, min_lr_ratio=0.1)
    assert lr_factor(10, 1000, cfg, time_fraction=0.0) > 0.99
    assert lr_factor(10, 1000, cfg, time_fraction=0.5) == pytest.approx(0.55)
    assert lr_factor(10, 1000, cfg, time_fraction=1.0) == pytest.approx(0.1)
    assert lr_factor(1000, 1000, cfg, time_fraction=0.2) == pytest.approx(0.1)  # steps can still end it first


def test_time_budget_stops_inside_an_epoch_and_exports_the_best_model(data_dir, tmp_path):
    out = tmp_path / "run"
    # 0.2 s of budget: the run stops after its first batch, far short of 50 epochs
    result = train([data_dir / "mp20_sample.csv"], out, ModelConfig.from_name("tiny"),
                   _tiny(max_epochs=50, batch_size=4, time_budget_min=0.2 / 60), val_fraction=0.2,
                   cache_dir=tmp_path / "cache", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by_time_budget"] is True
    assert 1 <= result.steps < 50 * 6
    assert result.best_val_nll is not None  # the final validation ran and exported a model
    meta = json.loads((out / "model" / "metadata.json").read_text())
    assert meta["step"] == result.steps and "val/nll" in meta["metrics"]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == result.steps  # the checkpoint is where the run stopped


def test_init_starts_from_a_model_directory_and_records_the_lineage(data_dir, tmp_path):
    data = [data_dir / "perov5_sample.csv"]
    first = train(data, tmp_path / "a", ModelConfig.from_name("tiny"), _tiny(max_epochs=1), val_fraction=0.2,
                  cache_dir=tmp_path / "cache", progress=False)
    parent = load_model(first.model_dir)
    # zero steps of training (max_steps=0 is refused by Lightning, so lr ~ 0): weights arrive unchanged
    second = train(data, tmp_path / "b", None, _tiny(max_epochs=1, max_steps=1, lr=1e-12), val_fraction=0.2,
                   cache_dir=tmp_path / "cache", progress=False, init=first.model_dir)
    child = load_model(second.model_dir)
    for (name, a), b in zip(parent.state_dict().items(), child.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    meta = json.loads((second.model_dir / "metadata.json").read_text())
    assert meta["init"] == str(first.model_dir) and len(meta["lineage"]) == 1
    from crystalformer.model.files import cumulative_train_s

    assert cumulative_train_s(meta) > meta["train_wall_s"]
    with pytest.raises(ValueError, match="n_layer=2"):
        train(data, tmp_path / "c", ModelConfig.from_name("tiny", n_layer=3), _tiny(), val_fraction=0.2,
              cache_dir=tmp_path / "cache", progress=False, init=first.model_dir)


def test_cli_init_and_time_budget(data_dir, tmp_path, capsys):
    data = str(data_dir / "perov5_sample.csv")
    cache = str(tmp_path / "c")
    assert main(["train", "--preset", "tiny", "--data", data, "--out", str(tmp_path / "a"), "--set", "max_epochs=1",
                 "--cache-dir", cache, "--quiet"]) == 0
    assert main(["train", "--init", str(tmp_path / "a" / "model"), "--preset", "tiny", "--data", data,
                 "--out", str(tmp_path / "b"), "--time-budget", "0.01", "--cache-dir", cache, "--quiet"]) == 0
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["train"]["time_budget_min"] == 0.01 and run["train"]["warmup_steps"] <= 50
    assert main(["train", "--init", str(tmp_path / "nope"), "--data", data, "--out", str(tmp_path / "d")]) == 2
    # a shipped model's name works as --init: the run takes that model's shape and weights
    assert main(["train", "--init", "perov_5", "--data", data, "--out", str(tmp_path / "f"), "--set", "max_steps=1",
                 "--set", "max_epochs=1", "--cache-dir", cache, "--quiet"]) == 0
    meta = json.loads((tmp_path / "f" / "model" / "metadata.json").read_text())
    assert meta["init"].endswith("perov_5") and meta["num_parameters"] > 1_000_000 and len(meta["lineage"]) == 2
    assert main(["train", "--data", data, "--out", str(tmp_path / "e"), "--time-budget", "nan"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "--time-budget" in err


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(data_dir, tmp_path):
    """Lightning DDP over gloo, 2 processes x batch 4 against 1 process x batch 8: the same weights."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from crystalformer.data import prepare

    helper = Path(__file__).parent / "helpers" / "ddp_train.py"
    data = tmp_path / "prepared"
    prepare([data_dir / "perov5_sample.csv"], data, progress=False)  # 20 crystals: global batches 8, 8, 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for devices, batch in ((1, 8), (2, 4)):
        done = subprocess.run([sys.executable, str(helper), str(data), str(tmp_path / f"run{devices}"), str(devices),
                               str(batch)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_model(tmp_path / "run1" / "model"), load_model(tmp_path / "run2" / "model")
    steps = [json.loads((tmp_path / f"run{d}" / "summary.json").read_text())["steps"] for d in (1, 2)]
    assert steps == [6, 6]
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)
    # (with Lightning's own distributed sampler the two runs differed by 2e-2 after these 6 steps)


def test_rank_shards_partition_each_global_batch():
    from crystalformer.datamodule import RankShard

    class Batches:
        def __iter__(self):
            return iter([list(range(0, 8)), list(range(8, 11))])

        def __len__(self):
            return 2

        def set_epoch(self, epoch):
            pass

    shards = [list(RankShard(Batches(), r, 2)) for r in range(2)]
    assert shards[0] == [[0, 2, 4, 6], [8, 10]] and shards[1] == [[1, 3, 5, 7], [9]]
    four = [list(RankShard(Batches(), r, 4)) for r in range(4)]
    assert all(len(s) == 2 for s in four)  # a batch of 3 is padded so that every rank steps
    assert sorted(x for s in four for x in s[1]) == [8, 8, 9, 10]


@pytest.mark.slow
def test_compiled_training_runs_and_exports_plain_weights(data_dir, tmp_path):
    """torch.compile of the transformer (in place): the exported model loads without compile (CPU: ~2 min)."""
    result = train([data_dir / "perov5_sample.csv"], tmp_path / "run", ModelConfig.from_name("tiny"),
                   _tiny(max_epochs=1, compile=True), val_fraction=0.2, cache_dir=tmp_path / "c", progress=False)
    assert result.best_val_nll is not None
    assert load_model(result.model_dir).num_parameters() == result.num_parameters


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_training_in_bf16_with_compile_and_time_budget(data_dir, tmp_path):
    result = train([data_dir / "mp20_sample.csv"], tmp_path / "run", ModelConfig.from_name("tiny"),
                   _tiny(max_epochs=50, compile=True, time_budget_min=0.5), val_fraction=0.2,
                   cache_dir=tmp_path / "c", progress=False)
    meta = json.loads((result.model_dir / "metadata.json").read_text())
    assert meta["hardware"]["gpu"] and result.best_val_nll is not None


class _Hostile:
    """Unpickling this creates a file: what a hostile run folder would do with code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("payload", ["hostile", "truncated", "not_a_checkpoint", "run_json_empty", "run_json_garbage"])
def test_resume_reads_checkpoints_as_plain_weights_only(tmp_path, payload, capsys):
    from crystalformer.config import config_to_dict

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    run = {"model": config_to_dict(ModelConfig.from_name("tiny")), "train": config_to_dict(_tiny()),
           "data": ["x.csv"], "val": None, "val_fraction": 0.05}
    (out / "run.json").write_text({"run_json_empty": "{}", "run_json_garbage": "{\"model\": [1"}.get(
        payload, json.dumps(run)))
    marker = tmp_path / "executed"
    last = out / "checkpoints" / "last.ckpt"
    if payload == "hostile":
        torch.save({"state_dict": {}, "evil": _Hostile(marker)}, last)
    elif payload == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, last)
        last.write_bytes(last.read_bytes()[:300])
    else:
        torch.save([1, 2, 3], last)
    code = main(["train", "--resume", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    named = "run.json" if payload.startswith("run_json") else "last.ckpt"
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()  # nothing was unpickled beyond plain data


def test_resume_still_loads_a_real_checkpoint(data_dir, tmp_path):
    from crystalformer.checkpoint import check_checkpoint

    out = tmp_path / "run"
    train([data_dir / "mp20_sample.csv"], out, ModelConfig.from_name("tiny"), _tiny(max_epochs=1), val_fraction=0.2,
          cache_dir=tmp_path / "cache", progress=False)
    check_checkpoint(out / "checkpoints" / "last.ckpt")  # Lightning's own checkpoint is plain data


def test_train_says_how_many_rows_it_skipped(data_dir, tmp_path, capsys):
    rows = list(csv.DictReader(open(data_dir / "mp20_sample.csv", newline="")))
    rows[3]["cif"] = rows[3]["cif"].replace("_cell_length_a", "_cell_length_a nan\n#", 1)
    rows[5]["cif"] = "data_broken\n_cell_length_a 1\n"
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code = main(["train", "--preset", "tiny", "--data", str(bad), "--out", str(tmp_path / "run"), "--set",
                 "max_epochs=1", "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"{len(rows) - 2} of {len(rows)} structures kept, 2 skipped" in err and "skipped.jsonl" in err


def test_config_yaml_with_python_tag_is_refused_in_one_line(data_dir, tmp_path, capsys):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'model: !!python/object/apply:builtins.open ["{marker}", "w"]\n')
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    for cfg in (evil, broken):
        code = main(["train", "--data", str(data_dir / "perov5_sample.csv"), "--out", str(tmp_path / "run"),
                     "--config", str(cfg)])
        err = capsys.readouterr().err
        assert code == 2 and cfg.name in err and "not plain YAML" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
