"""Refiner symmetry handling, network invariances, losses, save/load and CLI end to end."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalformer.crystal import Crystal
from crystalformer.io import read_csv_records, structure_from_cif
from crystalformer.refinement import wrapped
from crystalformer.refinement.api import refine_crystals
from crystalformer.refinement.config import NetworkConfig, RefinerConfig
from crystalformer.refinement.io import load_refiner, save_refiner
from crystalformer.refinement.losses import dsm_loss, ssm_loss
from crystalformer.refinement.model import Refiner
from crystalformer.refinement.network import ScoreNetwork
from crystalformer.refinement.symmetry import collate, crystals_from_u

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def crystals() -> list[Crystal]:
    out = []
    for rec in list(read_csv_records(DATA / "mp20_sample.csv"))[:12]:
        out.append(Crystal.from_structure(structure_from_cif(rec.cif)))
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One prepared-data cache for every training test of this module."""
    return tmp_path_factory.mktemp("refine_cache")


@pytest.fixture(scope="module")
def tiny_refiner() -> Refiner:
    torch.manual_seed(0)
    return Refiner(RefinerConfig.from_name("tiny")).eval()


def _spacegroup(crystal: Crystal, symprec: float = 1e-3) -> int:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(crystal.to_structure(), symprec=symprec).get_space_group_number()


def test_orbit_rebuild_matches_tables(crystals):
    batch = collate(crystals, dtype=torch.float64)
    frac = batch.frac().numpy()
    start = 0
    for c in crystals:
        ref = c.to_structure().frac_coords
        np.testing.assert_allclose(np.sort(frac[start: start + len(ref)], 0), np.sort(ref, 0), atol=1e-9)
        start += len(ref)


def test_projection_inverts_orbit_map(crystals):
    """A per-atom field that is the image of a free-parameter vector (R_a v) projects back to v."""
    batch = collate(crystals, dtype=torch.float64)
    v = torch.randn(batch.u.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * batch.mask
    per_atom = torch.einsum("nij,nj->ni", batch.rot, v[batch.atom_site])  # (N, 3)
    torch.testing.assert_close(batch.project(per_atom), v)


def test_noise_and_refinement_keep_space_group(crystals, tiny_refiner):
    g = torch.Generator().manual_seed(0)
    batch = collate(crystals, dtype=torch.float64)
    noisy = crystals_from_u(crystals, batch.noise(torch.full_like(batch.u[:, :1], 0.05), g))
    refined = refine_crystals(tiny_refiner, crystals, sigma_start=0.05, n_steps=5, seed=1)
    refined_ode = refine_crystals(tiny_refiner, crystals, sigma_start=0.05, n_steps=3, sampler="ode", seed=1)
    for c, n, r, o in zip(crystals, noisy, refined, refined_ode):
        for x in (n, r, o):
            assert (x.space_group, [(s.letter, s.element) for s in x.sites], x.lattice) == \
                   (c.space_group, [(s.letter, s.element) for s in c.sites], c.lattice)
        sg = _spacegroup(c)
        # the coordinates moved, the symmetry did not (a random move cannot raise it above the group)
        assert _spacegroup(r) == sg == _spacegroup(n) == _spacegroup(o), c


def test_network_invariances(crystals):
    torch.manual_seed(0)
    net = ScoreNetwork(NetworkConfig(hidden=16, n_layers=2, n_freq=4)).double().eval()
    batch = collate(crystals[:4], dtype=torch.float64)
    frac = batch.frac()
    sigma = torch.tensor([0.01, 0.1, 0.3, 0.05], dtype=torch.float64)
    ref = net(frac, sigma, batch.lattice, batch.species, batch.atom_batch)
    shifted = wrapped.wrap(frac + torch.tensor([0.3, -0.7, 0.11], dtype=torch.float64))
    torch.testing.assert_close(net(shifted, sigma, batch.lattice, batch.species, batch.atom_batch), ref)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    rotated = batch.lattice @ q  # rows rotated (and possibly reflected) in the Cartesian frame
    torch.testing.assert_close(net(frac, sigma, rotated, batch.species, batch.atom_batch), ref)
    # permuting whole crystals in the batch permutes nothing inside each crystal
    assert ref.shape == (batch.frac().shape[0], 3) and torch.isfinite(ref).all()


def test_losses_run_and_backprop(crystals, tiny_refiner):
    batch = collate(crystals[:4])
    for objective in ("dsm", "ssm"):
        loss = tiny_refiner.loss(batch, torch.Generator().manual_seed(0), objective)
        loss.backward()
        assert torch.isfinite(loss)


def test_dsm_and_ssm_learn_the_same_score():
    """1-d toy: data N_wrap(0.3, 0.05^2) at sigma 0.1; both objectives approach the exact marginal score."""
    sigma, s0 = 0.1, 0.05
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def make():
        return torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.SiLU(), torch.nn.Linear(64, 1)).double()

    def feats(z):
        k = torch.arange(1, 4, dtype=z.dtype)
        a = 2 * math.pi * z * k
        return torch.cat([torch.sin(a), torch.cos(a)], -1)

    nets = {"dsm": make(), "ssm": make()}
    opts = {k: torch.optim.Adam(n.parameters(), lr=3e-3) for k, n in nets.items()}
    one = torch.ones(512, 1, dtype=torch.float64)
    for _ in range(400):
        x0 = wrapped.sample(torch.full((512, 1), 0.3, dtype=torch.float64), s0, g)
        z = wrapped.sample(x0, sigma, g)
        for name, net in nets.items():
            score_fn = lambda zz, net=net: net(feats(zz)) / sigma  # noqa: E731
            if name == "dsm":
                loss = dsm_loss(score_fn(z), z, x0, one * sigma, one / sigma**2, one)
            else:
                loss = ssm_loss(score_fn, z, one / sigma**2, one, g)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
    grid = torch.linspace(0.15, 0.45, 31, dtype=torch.float64).unsqueeze(-1)  # where the data has mass
    exact = wrapped.score(grid, torch.full_like(grid, 0.3), math.sqrt(s0**2 + sigma**2))
    with torch.no_grad():
        d, s = (nets[k](feats(grid)) / sigma for k in ("dsm", "ssm"))
    scale = exact.abs().max()
    assert (d - exact).abs().max() / scale < 0.15
    assert (s - exact).abs().max() / scale < 0.15
    assert (d - s).abs().max() / scale < 0.2


def test_save_load_identical(tmp_path, crystals, tiny_refiner):
    save_refiner(tiny_refiner, tmp_path / "m", {"note": "test"})
    loaded = load_refiner(tmp_path / "m")
    batch = collate(crystals[:3])
    sigma = torch.tensor([0.02, 0.1, 0.4])
    torch.testing.assert_close(loaded.score(batch, batch.u, sigma), tiny_refiner.score(batch, batch.u, sigma),
                               rtol=0, atol=0)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["refiner"]["network"]["hidden"] == 16
    with pytest.raises(FileNotFoundError, match="not a crystalformer refiner directory"):
        load_refiner(tmp_path)
    cfg = tmp_path / "m" / "config.json"
    old = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({"format": "crystalformer-refiner/1", **old["refiner"]}))
    with pytest.raises(ValueError, match="format 1.*train it again"):
        load_refiner(tmp_path / "m")
    cfg.write_text(json.dumps({**old, "format": "crystalformer/1"}))
    with pytest.raises(ValueError, match="not a crystalformer refiner config"):
        load_refiner(tmp_path / "m")


def test_config_presets_and_overrides():
    cfg = RefinerConfig.from_name("small").override(lr="3e-4", hidden="32", objective="ssm")
    assert (cfg.train.lr, cfg.network.hidden, cfg.train.objective) == (3e-4, 32, "ssm")
    with pytest.raises(ValueError, match="unknown config field"):
        cfg.override(nope=1)
    with pytest.raises(ValueError, match="objective"):
        cfg.override(objective="mse")
    assert RefinerConfig.from_dict(cfg.to_dict()) == cfg


def _parser():
    from crystalformer.refinement.cli import add_parsers

    parser = argparse.ArgumentParser(prog="crystalformer")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_end_to_end(tmp_path, crystals, cache):
    from crystalformer.cli import UsageError

    parser = _parser()
    run = tmp_path / "run"
    args = parser.parse_args(["train-refiner", "--data", str(DATA / "perov5_sample.csv"), "--out", str(run),
                              "--preset", "tiny", "--set", "max_epochs=1", "--quiet",
                              "--cache-dir", str(cache)])
    assert args.func(args) == 0
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    args = parser.parse_args(["train-refiner", "--out", str(run), "--resume", "--set", "max_epochs=2", "--quiet"])
    assert args.func(args) == 0
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for i, c in enumerate(crystals[:3]):
        c.to_structure().to(filename=str(cifs / f"c{i}.cif"))
    out = tmp_path / "refined"
    argv = ["refine", "--model", str(run / "model"), "--input", str(cifs), "--out", str(out), "--n-steps", "3"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads((out / "samples.json").read_text())
    assert summary["counts"]["refined"] == 3 and len(list(out.glob("*.cif"))) == 3
    with pytest.raises(FileExistsError):
        args.func(parser.parse_args(argv))
    args = parser.parse_args([*argv[:-2], "--n-steps", "2", "--sampler", "ode", "--overwrite"])
    assert args.func(args) == 0
    # samples.json input: the refined folder itself
    args = parser.parse_args(["refine", "--model", str(run / "model"), "--input", str(out), "--out",
                              str(tmp_path / "again"), "--n-steps", "2"])
    assert args.func(args) == 0
    with pytest.raises(UsageError, match="sigma-start"):
        a = parser.parse_args([*argv[:-4], "--out", str(tmp_path / "x"), "--sigma-start", "0.9"])
        a.func(a)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path, monkeypatch, cache):
    from crystalformer.refinement.lit import NonFiniteLossError
    from crystalformer.refinement.train import train_refiner

    real = Refiner.loss
    calls = {"n": 0}

    def flaky(self, batch, generator=None, objective=None):
        calls["n"] += 1
        loss = real(self, batch, generator, objective)
        return loss * float("nan") if calls["n"] > 3 and self.training else loss

    monkeypatch.setattr(Refiner, "loss", flaky)
    cfg = RefinerConfig.from_name("tiny").override(max_epochs=3)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train_refiner([DATA / "perov5_sample.csv"], tmp_path / "run", cfg, progress=False,
                      cache_dir=cache, checkpoint_every=1)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
