"""Data preparation: counts by reason, exact decoding, caching, atomic writes, batching."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from crystalformer import Crystal, CrystalTokenizer
from crystalformer.data import PrepareConfig, load_prepared, prepare
from crystalformer.datamodule import CrystalDataModule, CrystalDataset, collate


@pytest.fixture(scope="module")
def bad_csv(tmp_path_factory, data_dir):
    """Six good rows plus a malformed CIF, a disordered one, an unknown element and one with too many sites."""
    good = pd.read_csv(data_dir / "mp20_sample.csv").head(6)
    big = pd.read_csv(data_dir / "mpts52_sample.csv").head(1)  # 52 atoms in P1-like cells: many sites
    disordered = (data_dir / "cif" / "CuAu_disordered.cif").read_text()
    rows = [*good.cif, "data_garbage\n_cell_length_a 4\n", disordered,
            good.cif.iloc[0].replace(" Sm ", " Xx ").replace("Sm0", "Xx0"), *big.cif]
    path = tmp_path_factory.mktemp("bad") / "mixed.csv"
    pd.DataFrame({"material_id": [f"m{i}" for i in range(len(rows))], "cif": rows,
                  "band_gap": np.arange(len(rows), dtype=float)}).to_csv(path)
    return path


def test_counts_by_reason_and_exact_decoding(bad_csv, tmp_path):
    summary = prepare([bad_csv], tmp_path / "p", PrepareConfig(n_max=10), progress=False)
    assert summary.total == 10 and summary.kept == 6
    assert summary.skipped == {"parse": 1, "disordered": 1, "unknown_element": 1, "too_many_sites": 1}
    data = load_prepared(tmp_path / "p")
    skipped = [json.loads(line) for line in (tmp_path / "p" / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["material_id"] for s in skipped) == ["m6", "m7", "m8", "m9"]
    assert all(s["message"] for s in skipped)
    tok = CrystalTokenizer()
    for i in range(len(data)):
        ids, values, _ = data.stream(i)
        assert tok.decode(ids, values) == data.crystal(i)
        p_ids, p_values, p_slots = data.stream(i, with_prompt=True)
        assert tok.decode(p_ids, p_values) == data.crystal(i)
        assert tok.to_words(p_ids)[1] == "[COMP]"
    assert data.records[2]["properties"] == {"band_gap": 2.0}
    meta = data.meta
    assert meta["counts"]["total"] == 10 and meta["settings"]["n_max"] == 10
    assert len(meta["sources"]) == 1 and len(meta["sources"][0]["sha256"]) == 64


def test_unknown_element_is_counted(tmp_path):
    cif = "data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n" \
          "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n" \
          "_atom_site_type_symbol\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n" \
          "_atom_site_fract_z\n_atom_site_occupancy\nOg Og1 0 0 0 1\n"
    path = tmp_path / "og.csv"
    pd.DataFrame({"cif": [cif]}).to_csv(path, index=False)
    summary = prepare([path], tmp_path / "p", progress=False)
    assert summary.skipped == {"unknown_element": 1}


def test_cache_reuse_and_rebuild(data_dir, tmp_path):
    src = tmp_path / "src.csv"
    pd.read_csv(data_dir / "perov5_sample.csv").head(5).to_csv(src, index=False)
    out = tmp_path / "p"
    first = prepare([src], out, progress=False)
    assert not first.reused
    assert prepare([src], out, progress=False).reused
    assert not prepare([src], out, PrepareConfig(symprec=0.1), progress=False).reused  # settings changed
    pd.read_csv(data_dir / "perov5_sample.csv").head(4).to_csv(src, index=False)  # file changed
    again = prepare([src], out, PrepareConfig(symprec=0.1), progress=False)
    assert not again.reused and again.total == 4
    assert not prepare([src], out, PrepareConfig(symprec=0.1), force=True, progress=False).reused


def test_no_partial_output_on_failure(data_dir, tmp_path, monkeypatch):
    import crystalformer.data as data_mod

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(data_mod, "_write_jsonl", boom)
    with pytest.raises(RuntimeError):
        prepare([data_dir / "perov5_sample.csv"], tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind either


def test_two_workers_give_identical_output(data_dir, tmp_path):
    inputs = [data_dir / "mp20_sample.csv", data_dir / "carbon24_sample.csv"]
    prepare(inputs, tmp_path / "a", PrepareConfig(workers=1, chunk_size=7), progress=False)
    prepare(inputs, tmp_path / "b", PrepareConfig(workers=2, chunk_size=7), progress=False)
    a, b = load_prepared(tmp_path / "a"), load_prepared(tmp_path / "b")
    assert a.records == b.records
    for key in a.tensors:
        assert np.array_equal(a.tensors[key], b.tensors[key])


def test_cif_folder_input(data_dir, tmp_path):
    summary = prepare([data_dir / "cif"], tmp_path / "p", progress=False)
    assert summary.total == 3 and summary.kept == 1
    assert summary.skipped == {"disordered": 1, "parse": 1}
    assert load_prepared(tmp_path / "p").crystal(0).formula == "Na4Cl4"


def test_bad_config_and_inputs(tmp_path):
    with pytest.raises(ValueError, match="symprec"):
        PrepareConfig(symprec=0)
    with pytest.raises(ValueError, match="n_max"):
        PrepareConfig(n_max=0)
    with pytest.raises(FileNotFoundError):
        prepare([tmp_path / "missing.csv"], tmp_path / "p")
    nocif = tmp_path / "x.csv"
    pd.DataFrame({"a": [1]}).to_csv(nocif)
    with pytest.raises(ValueError, match="'cif' column"):
        prepare([nocif], tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_prepared(tmp_path)


@pytest.fixture(scope="module")
def prepared(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "mp20"
    prepare([data_dir / "mp20_sample.csv"], out, progress=False)
    return out


def test_collate_pads(prepared):
    ds = CrystalDataset(prepared, prompt_fraction=0.0)
    batch = collate([ds[0], ds[1], ds[2]], pad_id=0)
    lengths = [len(ds[i]["ids"]) for i in range(3)]
    assert batch["ids"].shape == (3, max(lengths)) and batch["values"].dtype == torch.float32
    assert batch["mask"].sum(1).tolist() == lengths
    assert (batch["ids"][~batch["mask"]] == 0).all() and (batch["slots"][~batch["mask"]] == 0).all()


def test_prompt_fraction_is_honoured_and_reproducible(prepared):
    ds = CrystalDataset(prepared, prompt_fraction=0.3, seed=5)
    draws = [ds.with_prompt(i) for i in range(len(ds))]
    assert draws == [CrystalDataset(prepared, prompt_fraction=0.3, seed=5).with_prompt(i) for i in range(len(ds))]
    # the fraction over many (epoch, index) draws
    hits = 0
    for epoch in range(40):
        ds.set_epoch(epoch)
        hits += sum(ds.with_prompt(i) for i in range(len(ds)))
    frac = hits / (40 * len(ds))
    assert abs(frac - 0.3) < 4 * np.sqrt(0.3 * 0.7 / (40 * len(ds)))
    tok = CrystalTokenizer()
    for i in range(len(ds)):
        has = tok.id("[COMP]") in ds[i]["ids"]
        assert has == ds.with_prompt(i)
    assert all(CrystalDataset(prepared, prompt_fraction=1.0).with_prompt(i) for i in range(5))


def test_datamodule_yields_batches(data_dir, tmp_path):
    dm = CrystalDataModule(train=[data_dir / "mp20_sample.csv"], val=[data_dir / "perov5_sample.csv"],
                           batch_size=8, cache_dir=tmp_path, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["ids"].shape[0] == 8 and batch["num_atoms"].shape == (8,)
    val = list(dm.val_dataloader())
    assert sum(b["ids"].shape[0] for b in val) == 20
    again = CrystalDataModule(train=[data_dir / "mp20_sample.csv"], batch_size=8, cache_dir=tmp_path, seed=0)
    again.setup("fit")
    assert torch.equal(next(iter(again.train_dataloader()))["ids"], batch["ids"])  # seeded shuffling
    assert isinstance(Crystal.from_text(load_prepared(next(tmp_path.glob("data_mp20*"))).records[0]["text"]), Crystal)
