"""prepare (skips counted by reason, cache, atomic writes, parallel == serial), read-back, batching."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystalformer import Crystal, CrystalTokenizer
from crystalformer.data import FILES, PrepareConfig, file_sha256, load_prepared, prepare
from crystalformer.datamodule import CrystalDataModule, CrystalDataset, PromptSampler, collate, prompt_flags
from crystalformer.tokenizer import COMP, END_COMP, PAD, Slot

FIXTURE_CSVS = ("carbon24_sample.csv", "mp20_sample.csv", "mpts52_sample.csv", "perov5_sample.csv")

# the hand-made CSV: (material_id, expected outcome); see bad_csv below
BAD_ROWS = [("nacl", "kept"), ("malformed", "parse"), ("cuau", "disordered"), ("dummy", "unknown_element"),
            ("p1-4sites", "too_many_sites"), ("overlap", "overlap"), ("blank", "parse"), ("na2", "symmetry"),
            ("og", "unknown_element"), ("cscl", "kept")]


def _cif(species, coords, lattice=None) -> str:
    with warnings.catch_warnings():  # pymatgen notes elements without an electronegativity (Og)
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        return Structure(lattice or Lattice.cubic(3.0), species, coords).to(fmt="cif")


@pytest.fixture(scope="module")
def bad_csv(tmp_path_factory, data_dir) -> Path:
    """One row per way to fail, two good rows; with n_max=3."""
    nacl = (data_dir / "cif" / "NaCl.cif").read_text()
    skew = Lattice([[4.0, 0.1, 0.2], [0.3, 5.0, 0.1], [0.2, 0.4, 6.0]])
    cifs = {
        "nacl": nacl,
        "malformed": (data_dir / "cif" / "broken.cif").read_text(),
        "cuau": (data_dir / "cif" / "CuAu_disordered.cif").read_text(),
        "dummy": nacl.replace("Cl", "X"),  # pymatgen reads X as a DummySpecies
        "p1-4sites": _cif(["Na", "Cl", "K", "Br"], [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.3, 0.7, 0.2], [0.8, 0.5, 0.6]],
                          skew),  # P1: four sites > n_max = 3
        "overlap": _cif(["Na", "Cl"], [[0, 0, 0], [1e-4, 0, 0]]),  # spglib: both on 1a of Pm-3m
        "blank": "",
        "na2": _cif(["Na", "Na"], [[0, 0, 0], [1e-3, 0, 0]]),  # spglib finds no symmetry
        "og": _cif(["Og"], [[0, 0, 0]]),  # Z = 118: beyond the vocabulary (Z <= 103)
        "cscl": _cif(["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }
    path = tmp_path_factory.mktemp("bad") / "bad_rows.csv"
    pd.DataFrame({"material_id": [m for m, _ in BAD_ROWS], "cif": [cifs[m] for m, _ in BAD_ROWS],
                  "energy": np.arange(len(BAD_ROWS), dtype=float)}).to_csv(path)
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir):
    inputs = [data_dir / name for name in FIXTURE_CSVS] + [data_dir / "cif"]
    out = tmp_path_factory.mktemp("prep") / "fixtures"
    summary = prepare(inputs, out, progress=False)
    return summary, load_prepared(out)


def _quick(tmp_path, data_dir, name="out", **config):
    return prepare([data_dir / "perov5_sample.csv"], tmp_path / name, PrepareConfig(**config), progress=False)


# ---------------------------------------------------------------------- prepare: counts and contents
def test_fixtures_are_kept_except_the_two_bad_cif_files(prepared, data_dir):
    summary, data = prepared
    n_rows = sum(len(pd.read_csv(data_dir / n)) for n in FIXTURE_CSVS)
    assert (summary.total, summary.kept, summary.skipped) == (n_rows + 3, n_rows + 1, {"disordered": 1, "parse": 1})
    assert len(data) == summary.kept == data.meta["counts"]["kept"]
    assert {(Path(s["source"]).name, s["reason"]) for s in data.skipped()} == {
        ("CuAu_disordered.cif", "disordered"), ("broken.cif", "parse")}


def test_every_kept_crystal_decodes_from_its_tokens_to_its_text(prepared):
    _, data = prepared
    for i in range(len(data)):
        crystal = data.crystal(i)
        assert data.decode(i) == crystal
        assert data.decode(i, with_prompt=True) == crystal
        assert data.tensors["num_atoms"][i] == crystal.num_atoms
        assert data.tensors["n_sites"][i] == len(crystal.sites)


def test_kept_crystals_match_a_fresh_analysis_of_their_cif(prepared, data_dir):
    _, data = prepared
    df = pd.read_csv(data_dir / "mp20_sample.csv")
    rows = [r for r in data.records if Path(r["source"]).name == "mp20_sample.csv"]
    for r in rows[:5]:
        assert r["material_id"] == df["material_id"].iat[r["row"]]
        assert r["properties"]["band_gap"] == df["band_gap"].iat[r["row"]]
        assert Crystal.from_text(r["text"]) == Crystal.from_structure(df["cif"].iat[r["row"]])


def test_token_tensors_layout(prepared):
    _, data = prepared
    t, tok = data.tensors, data.tokenizer
    n = len(data)
    assert t["ids"].dtype == np.int64 and t["values"].dtype == np.float64 and t["slots"].dtype == np.int8
    assert t["offsets"].shape == t["prompt_offsets"].shape == (n + 1,)
    assert t["offsets"][0] == 0 and t["offsets"][-1] == len(t["ids"]) and np.all(np.diff(t["offsets"]) > 0)
    starts, ends = t["prompt_offsets"][:-1], t["prompt_offsets"][1:] - 1
    assert np.all(t["prompt_ids"][starts] == tok.id(COMP)) and np.all(t["prompt_ids"][ends] == tok.id(END_COMP))
    ids, values, slots = data.stream(0, with_prompt=True)
    enc = tok.encode(data.crystal(0), with_composition=True)
    np.testing.assert_array_equal(ids, enc.ids)
    np.testing.assert_array_equal(values, enc.values)
    np.testing.assert_array_equal(slots, enc.slots)
    assert CrystalTokenizer.load(data.path).vocab == CrystalTokenizer().vocab


def test_meta_records_sources_settings_and_counts(prepared, data_dir):
    summary, data = prepared
    meta = data.meta
    assert [Path(s["path"]).name for s in meta["sources"]][:4] == list(FIXTURE_CSVS)
    assert all(s["sha256"] == file_sha256(s["path"]) for s in meta["sources"])
    assert meta["settings"] == {"symprec": 0.01, "angle_tolerance": 5.0, "n_max": meta["n_max"]}
    assert meta["vocab_size"] == CrystalTokenizer().vocab_size
    lengths = np.diff(data.tensors["offsets"]) + np.diff(data.tensors["prompt_offsets"])
    assert meta["max_length"] == lengths.max()
    assert meta["elapsed_s"] > 0 and meta["package_version"]
    assert sorted(p.name for p in data.path.iterdir()) == sorted(FILES)


def test_bad_rows_are_skipped_and_counted_exactly(bad_csv, tmp_path):
    summary = prepare([bad_csv], tmp_path / "bad", PrepareConfig(n_max=3), progress=False)
    expected = {}
    for _, outcome in BAD_ROWS:
        expected[outcome] = expected.get(outcome, 0) + 1
    kept = expected.pop("kept")
    assert (summary.total, summary.kept, summary.skipped) == (len(BAD_ROWS), kept, expected)
    data = load_prepared(tmp_path / "bad")
    assert [r["material_id"] for r in data.records] == ["nacl", "cscl"]
    assert [r["properties"] for r in data.records] == [{"energy": 0.0}, {"energy": 9.0}]
    skipped = data.skipped()
    for s in skipped:
        row = [m for m, _ in BAD_ROWS].index(s["material_id"])
        assert s["row"] == row and s["reason"] == BAD_ROWS[row][1]
        assert s["source"] == str(bad_csv) and f"row {row} ({s['material_id']})" in s["message"]
    assert all(data.decode(i) == data.crystal(i) for i in range(len(data)))


def test_n_max_decides_too_many_sites(bad_csv, tmp_path):
    summary = prepare([bad_csv], tmp_path / "big", PrepareConfig(n_max=4), progress=False)
    assert "too_many_sites" not in summary.skipped and summary.kept == 3


# ---------------------------------------------------------------------- cache
def test_cache_is_reused_and_rebuilt_when_settings_or_files_change(tmp_path, data_dir):
    src = tmp_path / "in.csv"
    src.write_bytes((data_dir / "perov5_sample.csv").read_bytes())
    out = tmp_path / "out"
    first = prepare([src], out, progress=False)
    stamp = (out / "tokens.safetensors").stat().st_mtime_ns
    again = prepare([src], out, progress=False)
    assert again.reused and not first.reused and (again.kept, again.total) == (first.kept, first.total)
    assert (out / "tokens.safetensors").stat().st_mtime_ns == stamp  # nothing rewritten
    assert not prepare([src], out, PrepareConfig(symprec=0.1), progress=False).reused
    assert prepare([src], out, PrepareConfig(symprec=0.1), progress=False).reused
    assert not prepare([src], out, PrepareConfig(symprec=0.1), force=True, progress=False).reused
    assert prepare([src], out, PrepareConfig(symprec=0.1, workers=2, chunk_size=5), progress=False).reused
    df = pd.read_csv(src)
    df.iloc[:5].to_csv(src, index=False)  # the file changes
    rebuilt = prepare([src], out, PrepareConfig(symprec=0.1), progress=False)
    assert not rebuilt.reused and rebuilt.total == 5 == len(load_prepared(out))


def test_incomplete_cache_is_rebuilt(tmp_path, data_dir):
    first = _quick(tmp_path, data_dir)
    (first.out_dir / "crystals.jsonl").unlink()
    assert not _quick(tmp_path, data_dir).reused


def test_refuses_to_replace_a_folder_that_is_not_a_prepared_directory(tmp_path, data_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a prepared directory"):
        _quick(tmp_path, data_dir)
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_failure_mid_write_leaves_no_partial_output(tmp_path, data_dir, monkeypatch):
    import crystalformer.data as data_module

    calls = []

    def crash(path, rows):  # tokens.safetensors is written by then; crystals.jsonl is not
        calls.append(path)
        raise OSError("disk full")

    monkeypatch.setattr(data_module, "_write_jsonl", crash)
    with pytest.raises(OSError, match="disk full"):
        _quick(tmp_path, data_dir)
    assert calls and sorted(p.name for p in tmp_path.iterdir()) == []  # no out dir, no temporary left
    monkeypatch.undo()

    good = _quick(tmp_path, data_dir)
    before = {f: (good.out_dir / f).read_bytes() for f in FILES}
    monkeypatch.setattr(data_module, "_write_jsonl", crash)
    with pytest.raises(OSError, match="disk full"):
        _quick(tmp_path, data_dir, symprec=0.1)  # a rebuild that fails keeps the previous cache intact
    assert {f: (good.out_dir / f).read_bytes() for f in FILES} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupt_during_analysis_writes_nothing(tmp_path, data_dir, monkeypatch):
    import crystalformer.data as data_module

    def interrupted(records, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_module, "_process_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _quick(tmp_path, data_dir)
    assert list(tmp_path.iterdir()) == []


def test_two_workers_write_the_same_files_as_one(tmp_path, bad_csv, data_dir):
    inputs = [bad_csv, data_dir / "perov5_sample.csv"]
    outs = [prepare(inputs, tmp_path / f"w{w}", PrepareConfig(n_max=3, workers=w, chunk_size=4), progress=False)
            for w in (1, 2)]
    for name in ("tokens.safetensors", "crystals.jsonl", "skipped.jsonl", "tokenizer.json"):
        assert (outs[0].out_dir / name).read_bytes() == (outs[1].out_dir / name).read_bytes(), name
    metas = [json.loads((o.out_dir / "meta.json").read_text()) for o in outs]
    for m in metas:
        del m["elapsed_s"], m["created"], m["config"]["workers"]
    assert metas[0] == metas[1]


@pytest.mark.parametrize("bad", [dict(symprec=0), dict(symprec=1.5), dict(angle_tolerance=45), dict(n_max=0),
                                 dict(workers=0), dict(chunk_size=2.5), dict(n_max=True)])
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PrepareConfig(**bad)


def test_prepare_input_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one input"):
        prepare([], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        prepare([tmp_path / "missing.csv"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_prepared_errors(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="not a prepared directory"):
        load_prepared(tmp_path)
    out = _quick(tmp_path, data_dir).out_dir
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "format_version": 999}))
    with pytest.raises(ValueError, match="format 999"):
        load_prepared(out)


# ---------------------------------------------------------------------- batching
def test_collate_pads_to_the_longest_stream(prepared):
    _, data = prepared
    dataset = CrystalDataset(data, prompt_fraction=0.0)
    examples = [dataset[i] for i in range(6)]
    lengths = [len(e["ids"]) for e in examples]
    batch = collate(examples, pad_id=dataset.pad_id)
    B, T = len(examples), max(lengths)
    assert batch["ids"].shape == batch["values"].shape == batch["slots"].shape == batch["mask"].shape == (B, T)
    assert batch["ids"].dtype == torch.long and batch["values"].dtype == torch.float32
    assert batch["slots"].dtype == torch.long and batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(1).tolist() == lengths
    assert torch.equal(batch["num_atoms"], torch.as_tensor(data.tensors["num_atoms"][:6]))
    pad = ~batch["mask"]
    assert pad.any() and (batch["ids"][pad] == data.tokenizer.id(PAD)).all()
    assert (batch["slots"][pad] == Slot.PAD).all() and (batch["values"][pad] == 0).all()
    for b, e in enumerate(examples):
        n = lengths[b]
        assert batch["ids"][b, :n].tolist() == e["ids"].tolist()
        np.testing.assert_allclose(batch["values"][b, :n].numpy(), e["values"], rtol=1e-6)
        assert data.tokenizer.decode(batch["ids"][b].numpy(), batch["values"][b].double().numpy()).isclose(
            data.crystal(b), atol=1e-6, lattice_rtol=1e-6)


def test_prompt_is_inserted_after_bos(prepared):
    _, data = prepared
    tok = data.tokenizer
    plain = CrystalDataset(data, prompt_fraction=0.0)[3]
    prompted = CrystalDataset(data, prompt_fraction=1.0)[3]
    n = len(prompted["ids"]) - len(plain["ids"])
    assert n >= 4 and prompted["ids"][1] == tok.id(COMP) and prompted["ids"][n] == tok.id(END_COMP)
    assert prompted["ids"][n + 1:].tolist() == plain["ids"][1:].tolist()
    assert tok.decode(prompted["ids"], prompted["values"]) == data.crystal(3)


def test_prompt_fraction_is_honoured_and_reproducible():
    n, p = 20_000, 0.3
    flags = prompt_flags(n, p, seed=7)
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(flags.float().mean().item() - p) < 4 * sigma
    assert torch.equal(flags, prompt_flags(n, p, seed=7))
    assert not torch.equal(flags, prompt_flags(n, p, seed=8))
    assert not torch.equal(flags, prompt_flags(n, p, seed=7, epoch=1))
    assert not prompt_flags(50, 0.0, seed=1).any() and prompt_flags(50, 1.0, seed=1).all()
    state = torch.get_rng_state()
    prompt_flags(n, p, seed=3)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_sampler_visits_every_example_once_and_redraws_per_epoch(prepared):
    _, data = prepared
    dataset = CrystalDataset(data, prompt_fraction=0.5, seed=3)
    sampler = PromptSampler(dataset, shuffle=True, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(i for i, _ in first) == list(range(len(dataset))) == sorted(i for i, _ in second)
    assert first != second  # a plain loop advances the epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # ... and set_epoch reproduces it
    assert [f for _, f in sorted(first)] == prompt_flags(len(dataset), 0.5, seed=3).tolist()
    fixed = PromptSampler(dataset, shuffle=False, seed=3, per_epoch=False)
    fixed.set_epoch(5)
    assert list(fixed) == list(fixed) == [(i, f) for i, f in enumerate(prompt_flags(len(dataset), 0.5, 3).tolist())]


def test_datamodule_prepares_csvs_and_yields_batches(tmp_path, data_dir):
    dm = CrystalDataModule(train=[data_dir / "mp20_sample.csv", data_dir / "perov5_sample.csv"],
                           val=data_dir / "perov5_sample.csv", batch_size=8, prompt_fraction=0.5, seed=1,
                           cache_dir=tmp_path / "cache", prepare_config=PrepareConfig(workers=1))
    dm.prepare_data()
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one cache per distinct input
    dm.setup("fit")
    assert len(dm.train_set) == 50 and len(dm.val_set) == 20
    comp = CrystalTokenizer().id(COMP)
    batches = list(dm.train_dataloader())
    assert [b["ids"].shape[0] for b in batches] == [8] * 6 + [2]
    prompted = sum(int((b["ids"][:, 1] == comp).sum()) for b in batches)
    assert 0 < prompted < 50
    again = [b["ids"] for b in CrystalDataModule(
        train=[dm.cache_dir / p.name for p in sorted(dm.cache_dir.iterdir())][::-1],  # prepared dirs pass through
        batch_size=8, seed=1).train_dataloader()]
    assert sum(int((ids[:, 1] == comp).sum()) for ids in again) > 0
    val = [b["ids"] for b in dm.val_dataloader()]
    assert [v.tolist() for v in val] == [b["ids"].tolist() for b in dm.val_dataloader()]  # fixed across epochs


@pytest.mark.parametrize("bucket", [False, True])
def test_dataloader_workers_do_not_change_batches(prepared, tmp_path, bucket):
    _, data = prepared
    dm = CrystalDataModule(train=data.path, batch_size=16, seed=5, bucket=bucket)
    serial = [b["ids"] for b in dm.train_dataloader()]
    dm2 = CrystalDataModule(train=data.path, batch_size=16, seed=5, num_workers=2, bucket=bucket)
    parallel = [b["ids"] for b in dm2.train_dataloader()]
    assert len(serial) == len(parallel) and all(torch.equal(a, b) for a, b in zip(serial, parallel))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*does not have many workers",
                            "ignore:You passed in a `val_dataloader`")
def test_lightning_trainer_draws_new_batches_each_epoch(prepared):
    import lightning as L

    _, data = prepared

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.first_batches = []

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                self.first_batches.append(batch["ids"].clone())
            return self.weight * batch["values"].mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Recorder()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, CrystalDataModule(train=data.path, batch_size=8, seed=0))
    assert len(model.first_batches) == 2 and not torch.equal(*model.first_batches)


def test_bucketed_batches_cover_each_example_once_with_its_prompt_flag_and_pad_less(prepared):
    from crystalformer.datamodule import BucketBatchSampler

    dataset = CrystalDataset([prepared[1]], prompt_fraction=0.5, seed=3)
    plain, prompted = dataset.stream_lengths()
    sampler = BucketBatchSampler(dataset, batch_size=4, seed=3, pool=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        pairs = [p for batch in batches for p in batch]
        assert sorted(i for i, _ in pairs) == list(range(len(dataset)))  # each example exactly once
        flags = prompt_flags(len(dataset), 0.5, 3, epoch)
        assert all(flag == bool(flags[i]) for i, flag in pairs)  # the same draw as PromptSampler's
        for batch in batches:  # the lengths match what collate pads
            ids = collate([dataset[p] for p in batch], dataset.pad_id)["ids"]
            lengths = [prompted[i] if flag else plain[i] for i, flag in batch]
            assert ids.shape[1] == max(lengths)
    lengths = np.where(prompt_flags(len(dataset), 0.5, 3, 1).numpy(), prompted, plain)
    padded = sum(len(b) * max(lengths[i] for i, _ in b) for b in batches)  # tokens computed, padding included
    order = np.random.default_rng(0).permutation(len(dataset))
    unbucketed = sum(len(order[k:k + 4]) * lengths[order[k:k + 4]].max() for k in range(0, len(order), 4))
    assert padded < unbucketed
