"""Ranking CSP candidates by the probability of their symmetry skeleton (sampling/skeleton.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crystalformer.cli import main
from crystalformer.defaults import resolve_model
from crystalformer.model import load_model
from crystalformer.sampling.api import Sample, predict_structure
from crystalformer.sampling.skeleton import (
    DISCRETE_PARTS,
    rank_by_skeleton,
    skeleton_log_p,
)


@pytest.fixture(scope="module")
def model():
    return load_model(resolve_model("perov_5"))


def test_skeleton_is_a_probability_and_the_rest_is_density(model):
    with torch.no_grad():
        result = predict_structure(model, "SrTiO3", n=16, seed=0)
        crystals = [s.crystal for s in result.samples if s.crystal is not None]
        lp = model.log_prob(crystals, with_composition=True)
    skel = skeleton_log_p(model, crystals)
    assert np.all(skel <= 1e-6)  # log of a probability
    parts = sum(v.numpy() for v in lp.by_slot.values())
    assert np.allclose(parts, lp.total.numpy(), atol=1e-4)  # the slots partition the total
    continuous = lp.total.numpy() - skel
    assert np.allclose(continuous, sum(lp.by_slot[k].numpy() for k in lp.by_slot if k not in DISCRETE_PARTS),
                       atol=1e-4)


def test_ranking_orders_by_skeleton_then_log_likelihood_and_keeps_failures_last(model):
    with torch.no_grad():
        result = predict_structure(model, "SrTiO3", n=16, seed=1)
    samples = [*result.samples, Sample(None, 0.0, error="invalid: x")]
    ranked = rank_by_skeleton(model, samples)
    assert len(ranked) == len(samples) and ranked[-1].crystal is None
    keys = [(s.skeleton_log_p, s.log_likelihood) for s in ranked[:-1]]
    assert keys == sorted(keys, reverse=True)
    assert sorted(s.log_likelihood for s in ranked) == sorted(s.log_likelihood for s in samples)


def test_csp_rank_skeleton_option(tmp_path, capsys):
    out = tmp_path / "csp"
    assert main(["csp", "--model", "perov_5", "--composition", "SrTiO3", "--n", "5", "--rank", "skeleton",
                 "--candidates", "16", "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "samples.json").read_text())["samples"]
    skel = [r["skeleton_log_p"] for r in rows]
    assert skel == sorted(skel, reverse=True) and all(v <= 0 for v in skel)
    assert "ranked by skeleton probability" in capsys.readouterr().out
    assert main(["csp", "--model", "perov_5", "--composition", "SrTiO3", "--n", "5", "--out",
                 str(tmp_path / "lp"), "--quiet"]) == 0  # the default: log-likelihood
    rows = json.loads((tmp_path / "lp" / "samples.json").read_text())["samples"]
    assert "skeleton_log_p" not in rows[0]
    lps = [r["log_likelihood"] for r in rows]
    assert lps == sorted(lps, reverse=True)


def test_candidates_default_follows_the_ranking(tmp_path):
    from crystalformer.api import SKELETON_CANDIDATES, default_candidates
    from crystalformer.physics.ranking import RankConfig

    out = tmp_path / "sk"
    assert main(["csp", "--model", "perov_5", "--composition", "SrTiO3", "--n", "2", "--rank", "skeleton",
                 "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "samples.json").read_text())["meta"]
    assert meta["candidates"] == SKELETON_CANDIDATES == default_candidates("skeleton") == 64
    assert default_candidates("energy") == RankConfig.candidates == 256
    assert meta["relax_top"] is None  # only the energy ranking relaxes
    assert RankConfig.relax_top == 3
    assert main(["csp", "--model", "perov_5", "--composition", "SrTiO3", "--n", "2", "--rank", "skeleton",
                 "--candidates", "0", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
