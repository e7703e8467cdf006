"""Sampling on tiny random models: legality, constraints, CSP exactness, SMC vs rejection, seeds, errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from crystalformer import CrystalTokenizer, ModelConfig
from crystalformer.cli import main
from crystalformer.model import CrystalFormer
from crystalformer.sampling.api import predict_structure, sample
from crystalformer.sampling.constraints import composition_branches
from crystalformer.sampling.decoder import DecodeOptions, decode
from crystalformer.symmetry import space_group
from crystalformer.sampling.constraints import Constraint, ConstraintMasks


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def _model(n_max=6, scale=0.02, seed=0, boost=()):
    tokenizer = CrystalTokenizer()
    torch.manual_seed(seed)
    model = CrystalFormer(ModelConfig.from_name("tiny", n_max=n_max), tokenizer).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
        for word, b in boost:  # make some tokens likely so that rejection sampling accepts often
            model.token_head.bias[tokenizer.id(word)] += b
    return model


@pytest.fixture(scope="module")
def model():
    return _model(boost=(("[STOP]", 2.0),))


def test_unconditional_samples_are_legal_and_seeded(model):
    a = sample(model, 24, seed=3)
    for s in a.samples:
        model.grammar.check(s.ids)
        assert s.crystal is not None and np.isfinite(s.log_likelihood)
    b = sample(model, 24, seed=3)
    assert [s.ids for s in a.samples] == [s.ids for s in b.samples]
    assert [s.values for s in a.samples] == [s.values for s in b.samples]
    c = sample(model, 24, seed=4)
    assert [s.ids for s in a.samples] != [s.ids for s in c.samples]


def test_decoding_without_kv_cache_gives_the_same_samples(model):
    a = sample(model, 10, seed=7, space_groups=[12, 62], elements=["O", "Fe"])
    b = sample(model, 10, seed=7, space_groups=[12, 62], elements=["O", "Fe"], kv_cache=False)
    assert [s.ids for s in a.samples] == [s.ids for s in b.samples]
    assert np.allclose(np.concatenate([s.values for s in a.samples]), np.concatenate([s.values for s in b.samples]),
                       atol=1e-4)


def test_reported_log_likelihood_equals_model_log_prob(model):
    result = sample(model, 12, seed=5)
    lp = model.log_prob([s.crystal for s in result.samples])
    # values are float32 in the decoder and rounded to 10 decimals in a Crystal: tiny differences only
    assert np.allclose(lp.total.numpy(), [s.log_likelihood for s in result.samples], atol=1e-3)


def test_space_groups_and_element_lists_hold_in_every_sample(model):
    result = sample(model, 40, space_groups=[221, 225], elements=["Na", "Cl", "K"], seed=1)
    assert len(result) == 40
    for s in result.samples:
        model.grammar.check(s.ids)
        assert s.crystal.space_group in (221, 225)
        assert set(s.crystal.composition) <= {"Na", "Cl", "K"}
    per_site = sample(model, 20, site_elements={0: ["O"]}, seed=2)
    assert all(s.crystal.sites[0].element == "O" for s in per_site.samples)


def test_csp_samples_have_exactly_the_composition(model):
    for comp, cell in (("NaCl", "reduced"), ("Li2O1", "primitive"), ("Ti2O4", "conventional")):
        result = predict_structure(model, comp, n=12, cell=cell, seed=0)
        branches = {b.formula: b for b in composition_branches(comp, model.grammar, cell)}
        for s in result.samples:
            model.grammar.check(s.ids)
            c = s.crystal
            branch = branches[s.prompt]
            assert c.composition == dict(branch.counts)
            assert c.space_group in branch.space_groups
        lls = [s.log_likelihood for s in result.samples]
        assert lls == sorted(lls, reverse=True)


def test_primitive_cell_counts_scale_with_centring(model):
    branches = composition_branches("Na1Cl1", model.grammar, "primitive")
    by_factor = {b.counts[0][1]: b for b in branches}
    from crystalformer import space_group

    for factor, b in by_factor.items():
        assert all(space_group(n).centering_factor == factor for n in b.space_groups)
    assert 225 in by_factor[4].space_groups  # NaCl in Fm-3m is Na4Cl4


def test_impossible_compositions_and_unknown_elements_raise_before_sampling(model):
    with pytest.raises(ValueError, match="cannot be realized"):
        composition_branches("Na1Cl1", model.grammar, "conventional", space_groups=[225])
    with pytest.raises(ValueError, match="cannot be realized"):
        predict_structure(model, "HLiBeBCNO", cell="conventional", n=2)  # 7 elements need 7 sites > n_max = 6
    with pytest.raises(ValueError, match="unknown element"):
        predict_structure(model, "Xx2O", n=2)
    with pytest.raises(ValueError, match="unknown element"):
        sample(model, 2, elements=["Na", "Qq"])
    with pytest.raises(ValueError, match="space groups"):
        sample(model, 2, space_groups=[231])


def _key(ids, tokenizer):
    return tuple(tokenizer.vocab[i] for i in ids if tokenizer.vocab[i].startswith(("W_",)) or
                 tokenizer.vocab[i] in ("Na", "Cl"))


def test_smc_matches_exact_rejection_sampling():
    """Target: q(X | prompt, SG 1) restricted to elements in {Na, Cl} and exactly Na2Cl1.

    Rejection sampling draws from the model with only the space group fixed (exact: it is the
    first choice) and keeps the streams that satisfy the rest; SMC masks and reweights.
    """
    model = _model(n_max=3, scale=0.3, seed=11,
                   boost=(("Na", 6.0), ("Cl", 6.0), ("SG1", 20.0), ("W_a", 3.0), ("[STOP]", -2.0)))
    tok, grammar = model.tokenizer, model.grammar
    branch = composition_branches("Na2Cl1", grammar, "conventional", space_groups=[1])[0]
    prefix = branch.prompt_ids(grammar)
    na_cl = ConstraintMasks.compile(Constraint(space_groups=frozenset([1]), elements=frozenset(["Na", "Cl"])),
                                    grammar)
    # rejection: structural masks only (no composition), accept the exact composition
    unconstrained = ConstraintMasks.compile(Constraint(space_groups=frozenset([1])), grammar)
    g = torch.Generator().manual_seed(0)
    accepted: list = []
    plain_grammar = _structural_only(grammar)
    while len(accepted) < 2500:  # ~40% of the draws are accepted
        d = _decode_with(model, plain_grammar, [prefix] * 2000, unconstrained, g)
        for ids in d.ids:
            els = [tok.vocab[i] for i in ids[len(prefix):] if tok.vocab[i] in tok.vocab and
                   tok.token_slot(i).name == "ELEMENT"]
            if sorted(els) == ["Cl", "Na", "Na"]:
                accepted.append(_key(ids[len(prefix):], tok))
    smc = decode(model, [prefix] * 4000, [na_cl] * 4000, DecodeOptions(), torch.Generator().manual_seed(1))
    idx = np.random.default_rng(0).choice(4000, size=2500, p=_normalized(smc.log_weight))
    smc_keys = [_key(smc.ids[i][len(prefix):], tok) for i in idx]
    plain = decode(model, [prefix] * 2500, [na_cl] * 2500, DecodeOptions(smc=False), torch.Generator().manual_seed(2))
    plain_keys = [_key(ids[len(prefix):], tok) for ids in plain.ids]
    tv_smc = _tv(Counter(smc_keys), Counter(accepted))
    tv_plain = _tv(Counter(plain_keys), Counter(accepted))
    assert tv_smc < 0.05, (tv_smc, tv_plain)
    assert tv_plain > tv_smc  # the greedy truncation is measurably off on this model


def _structural_only(grammar):
    """The grammar with the prompt as context only (its counts unenforced): the rejection sampler's proposal."""
    from crystalformer.grammar import Grammar

    return Grammar(grammar.tokenizer, grammar.n_max, composition=False)


def _decode_with(model, grammar, prefixes, masks, generator):
    return decode(model, prefixes, [masks] * len(prefixes), DecodeOptions(smc=False), generator, grammar=grammar)


def _normalized(log_w):
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def _tv(a: Counter, b: Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def test_cli_sample_and_csp_write_folders_and_refuse_overwrite(model, tmp_path, capsys):
    model.save(tmp_path / "m")
    out = tmp_path / "s"
    assert main(["sample", "--model", str(tmp_path / "m"), "--n", "5", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "samples.json").read_text())
    assert len(data["samples"]) == 5 and len(list(out.glob("*.cif"))) == data["counts"]["written"]
    assert main(["sample", "--model", str(tmp_path / "m"), "--n", "5", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    csp = tmp_path / "c"
    assert main(["csp", "--model", str(tmp_path / "m"), "--composition", "NaCl", "--n", "3", "--out", str(csp)]) == 0
    rows = json.loads((csp / "samples.json").read_text())["samples"]
    assert [r["rank"] for r in rows] == [0, 1, 2] and all(r["formula"] for r in rows)
    assert main(["csp", "--model", str(tmp_path / "m"), "--composition", "Qq2", "--n", "3",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown element" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_sample_with_refiner_keeps_symmetry_and_elements(model, tmp_path):
    from crystalformer.refinement.config import RefinerConfig
    from crystalformer.refinement.io import save_refiner
    from crystalformer.refinement.model import Refiner

    torch.manual_seed(0)
    save_refiner(Refiner(RefinerConfig.from_name("tiny")).eval(), tmp_path / "r")
    model.save(tmp_path / "m")
    plain, refined = tmp_path / "plain", tmp_path / "refined"
    args = ["sample", "--model", str(tmp_path / "m"), "--n", "6", "--seed", "3", "--quiet"]
    assert main([*args, "--out", str(plain)]) == 0
    assert main([*args, "--out", str(refined), "--refine", str(tmp_path / "r"), "--sigma-start", "0.1"]) == 0
    a = json.loads((plain / "samples.json").read_text())
    b = json.loads((refined / "samples.json").read_text())
    assert b["meta"]["refiner"] == str(tmp_path / "r")
    moved = 0
    for x, y in zip(a["samples"], b["samples"]):
        assert (x["space_group"], x["wyckoff"], x["formula"]) == (y["space_group"], y["wyckoff"], y["formula"])
        moved += x["text"] != y["text"]
    assert moved > 0  # coordinates with free parameters were refined


def test_atom_count_constraint_matches_rejection_sampling():
    """Target: q(X | SG 2) restricted to exactly 2 atoms in the cell (P-1: 1a..1h once each, 2i repeatable).

    Rejection keeps the unconstrained draws with 2 atoms; SMC masks the sites that cannot reach 2
    and [STOP] before it, and reweights. Both must give the same distribution of Wyckoff sequences
    (keyed by the number of sites and the first letter); greedy masking without weights must not.
    """
    model = _model(n_max=3, scale=0.3, seed=5, boost=(("SG2", 20.0), ("[STOP]", 2.0)))
    tok, grammar = model.tokenizer, model.grammar
    prefix = [grammar.bos]
    sg_only = ConstraintMasks.compile(Constraint(space_groups=frozenset([2])), grammar)
    two = ConstraintMasks.compile(Constraint(space_groups=frozenset([2]), atoms=frozenset([2])), grammar)
    mult = {f"W_{w.letter}": w.multiplicity for w in space_group(2).wyckoff}

    def letters(ids):
        return [tok.vocab[i] for i in ids if tok.vocab[i].startswith("W_")]

    def key(ids):
        w = letters(ids)
        return len(w), w[0]

    g = torch.Generator().manual_seed(0)
    accepted: list = []
    while len(accepted) < 1500:  # ~11 % of the draws have 2 atoms
        d = decode(model, [prefix] * 2000, [sg_only] * 2000, DecodeOptions(smc=False), g)
        accepted += [key(ids) for ids in d.ids if sum(mult[w] for w in letters(ids)) == 2]
    smc = decode(model, [prefix] * 3000, [two] * 3000, DecodeOptions(), torch.Generator().manual_seed(1))
    assert all(sum(mult[w] for w in letters(ids)) == 2 for ids in smc.ids)  # exact, by the grammar
    idx = np.random.default_rng(0).choice(3000, size=1500, p=_normalized(smc.log_weight))
    tv_smc = _tv(Counter(key(smc.ids[i]) for i in idx), Counter(accepted[:1500]))
    plain = decode(model, [prefix] * 1500, [two] * 1500, DecodeOptions(smc=False), torch.Generator().manual_seed(2))
    tv_plain = _tv(Counter(key(ids) for ids in plain.ids), Counter(accepted[:1500]))
    assert tv_smc < 0.06, (tv_smc, tv_plain)
    assert tv_plain > tv_smc


def test_atom_counts_are_checked_before_sampling(model):
    from crystalformer.sampling.constraints import parse_atoms

    assert parse_atoms("5") == {5} and parse_atoms("10-12") == {10, 11, 12} and parse_atoms("4,8-9") == {4, 8, 9}
    for bad in ("0", "x", "9-3", "1-100000"):
        with pytest.raises(ValueError, match="--atoms"):
            parse_atoms(bad)
    with pytest.raises(ValueError, match="holds 1000 atoms"):
        sample(model, 2, atoms=1000)  # n_max=6 sites cannot hold 1000 atoms in any group


# ---------------------------------------------------------------------- the one decoding kernel
def test_finished_streams_leave_the_batch(model):
    """Rows whose stream has ended stop costing network work: the batch shrinks as streams finish."""
    sizes = []
    hidden = model.hidden

    def counting(ids, *args, **kwargs):
        sizes.append(ids.shape[0])
        return hidden(ids, *args, **kwargs)

    model.hidden = counting
    try:
        d = decode(model, [[model.grammar.bos]] * 64, ConstraintMasks.compile(Constraint(), model.grammar),
                   DecodeOptions(smc=False), torch.Generator().manual_seed(0))
    finally:
        del model.hidden
    lengths = sorted(len(i) for i in d.ids)
    assert lengths[0] < lengths[-1]  # streams of different lengths
    assert sizes[0] == 64 and sizes[-1] < 64 and sizes == sorted(sizes, reverse=True)
    # every token but [BOS] (read first) and [EOS] (never read) is fed back once; finished rows
    # ride along only until a quarter of the batch has finished (then they are dropped)
    needed = sum(n - 2 for n in lengths)
    assert needed <= sum(sizes[1:]) <= needed / 0.75 + 64


def test_records_are_the_model_log_probability_per_position(model):
    """Per-position records of decoded streams sum to ``model.log_prob`` (an independent teacher-forced pass)."""
    masks = ConstraintMasks.compile(Constraint(), model.grammar)
    d = decode(model, [[model.grammar.bos]] * 12, masks, DecodeOptions(smc=False), torch.Generator().manual_seed(5),
               records=True)
    crystals = [model.tokenizer.decode(i, v) for i, v in zip(d.ids, d.values)]
    want = model.log_prob(crystals).total.numpy()
    got = np.array([p.sum() for p in d.log_p])
    assert np.allclose(got, d.log_likelihood) and np.allclose(got, want, atol=1e-3)
    assert all(len(p) == len(i) and p[0] == 0.0 for p, i in zip(d.log_p, d.ids))
    assert all(np.allclose(z, 0.0, atol=1e-5) for z in d.log_z)  # no constraint: the masks remove no mass


def test_teacher_forced_prefix_is_kept_and_the_rest_drawn(model):
    masks = ConstraintMasks.compile(Constraint(), model.grammar)
    full = decode(model, [[model.grammar.bos]] * 4, masks, DecodeOptions(smc=False), torch.Generator().manual_seed(1),
                  records=True)
    cut = [(full.ids[i][1:6], full.values[i][1:6]) for i in range(4)]
    again = decode(model, [[model.grammar.bos]] * 4, masks, DecodeOptions(smc=False),
                   torch.Generator().manual_seed(9), forced=cut, records=True)
    for i in range(4):
        assert again.ids[i][:6] == full.ids[i][:6]
        assert np.allclose(again.log_p[i][:6], full.log_p[i][:6], atol=1e-5)
        model.grammar.check(again.ids[i])
    with pytest.raises(ValueError, match="smc=False"):
        decode(model, [[model.grammar.bos]], masks, DecodeOptions(), torch.Generator(), forced=cut[:1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_and_csp_run_on_cuda_with_a_device_generator(model):
    cuda = _model(boost=(("[STOP]", 2.0),)).cuda()
    s = sample(cuda, 16, seed=0, space_groups=[225])
    assert all(x.crystal is not None and x.crystal.space_group == 225 for x in s.samples)
    assert len(predict_structure(cuda, "NaCl", n=4, seed=0)) == 4



def test_predict_targets_subsets_give_the_same_predictions(model, data_dir):
    from crystalformer.api import predict_targets

    csv = data_dir / "perov5_sample.csv"
    full = predict_targets(model, csv, 2, seed=3)
    part = predict_targets(model, csv, 2, indices=[1, 3], seed=3)
    assert full.num_targets > 3 and part.num_targets == 2 and not full.skipped
    ids = {r["material_id"] for r in part.rows}
    want = [s.ids for s, r in zip(full.samples, full.rows) if r["material_id"] in ids]
    assert [s.ids for s in part.samples] == want
    assert [r["rank"] for r in part.rows] == [0, 1, 0, 1]


def test_reduced_formula_particles_follow_the_formula_unit_prior(model):
    from crystalformer.sampling.constraints import Z_COUNTS, assign_branches, branch_weights

    branches = composition_branches("NaCl", model.grammar, "reduced", max_atoms=12)
    zs = [b.formula_units for b in branches]
    w = branch_weights(branches)
    assert np.isclose(w.sum(), 1.0)
    assert w[zs.index(4)] > w[zs.index(2)] > w[zs.index(1)] > w[zs.index(5)]  # as in the training data
    assert np.isclose(w[zs.index(4)] / w[zs.index(1)], (Z_COUNTS[4] + 1) / (Z_COUNTS[1] + 1))
    assigned = assign_branches(branches, 1000, w)
    got = np.array([sum(a is b for a in assigned) for b in branches])
    assert np.all(np.abs(got - 1000 * w) <= 1)  # stratified: each branch within one particle of its share
    assert assign_branches(branches, 7) == [branches[i % len(branches)] for i in range(7)]  # even without weights


@pytest.mark.parametrize("kappa", [0.3, 4.0, 80.0])
def test_von_mises_proposals_at_once_match_the_sequential_sampler(kappa):
    """The first accepted of R proposals drawn together is the sequential rejection sampler's draw:
    two-sample KS against it, with R = 1 (misses common) and R = 16."""
    from scipy.stats import ks_2samp

    from crystalformer.model.distributions import sample_von_mises, sample_von_mises_at_once

    k = torch.full((20000,), kappa, dtype=torch.float64)
    exact = sample_von_mises(k, torch.Generator().manual_seed(0)).numpy()
    for rounds in (1, 16):
        theta, ok = sample_von_mises_at_once(k, torch.Generator().manual_seed(rounds), rounds)
        assert ok.float().mean() > (0.6 if rounds == 1 else 0.999)
        assert ks_2samp(theta[ok].numpy(), exact).pvalue > 1e-3


def test_decoding_without_host_syncs_on_coordinates_scores_what_it_draws(model):
    """von_mises_rounds=1 forces the rare-miss path (about a third of coordinates are drawn again):
    streams stay legal and their records still sum to model.log_prob."""
    masks = ConstraintMasks.compile(Constraint(), model.grammar)
    d = decode(model, [[model.grammar.bos]] * 16, masks, DecodeOptions(smc=False, von_mises_rounds=1),
               torch.Generator().manual_seed(2), records=True)
    crystals = [model.tokenizer.decode(i, v) for i, v in zip(d.ids, d.values)]
    assert np.allclose(d.log_likelihood, model.log_prob(crystals).total.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="von_mises_rounds"):
        DecodeOptions(von_mises_rounds=-1)


def test_csp_without_smc_keeps_every_formula_unit_in_its_subset(model):
    """Particles are assigned to prompts in blocks (by the Z prior); keeping n of them must not keep
    only the first prompts."""
    res = predict_structure(model, "NaCl", n=8, max_atoms=16, smc=False, seed=0)
    zs = {s.prompt for s in res.samples}
    assert len(zs) >= 3  # Z = 1 .. 8: a spread, not only Na1Cl1 / Na2Cl2


def test_formula_units_and_space_groups_may_be_any_iterable(model):
    a = composition_branches("NaCl", model.grammar, "reduced", formula_units=iter([1, 2, 4]), space_groups=iter([225, 221]))
    b = composition_branches("NaCl", model.grammar, "reduced", formula_units=[1, 2, 4], space_groups=[225, 221])
    assert a == b and a and all(x.space_groups <= {225, 221} for x in a)


def test_von_mises_misses_are_drawn_again_in_the_same_component():
    """Two components, one hard to accept (kappa 1e4) and one easy (kappa 1): redrawing the component
    on a miss would favour the easy one; redrawing only the angle keeps the mixture weights."""
    import math

    from crystalformer.model.distributions import VonMisesMixture, angle_in_component

    n = 40000
    mix = VonMisesMixture(torch.zeros(n, 2), torch.tensor([[0.0, math.pi]]).expand(n, 2),
                          torch.tensor([[1e4, 1.0]]).expand(n, 2))
    g = torch.Generator().manual_seed(0)
    x, ok, (loc, kappa) = mix.sample(g, rounds=1)
    miss = (~ok).nonzero().squeeze(-1)
    assert len(miss) > 0.1 * n
    x = x.clone()
    x[miss] = angle_in_component(loc[miss], kappa[miss], g)
    near_first = float(((x < 0.02) | (x > 0.98)).float().mean())  # component 0 (weight 1/2) sits at x = 0
    assert abs(near_first - float(((mix.sample(torch.Generator().manual_seed(1)) < 0.02) |
                                    (mix.sample(torch.Generator().manual_seed(1)) > 0.98)).float().mean())) < 0.015
