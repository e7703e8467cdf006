"""The pure-torch model on tiny configs: causality, KV cache, masks, exact likelihood, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crystalformer import CrystalTokenizer, ModelConfig
from crystalformer.datamodule import collate
from crystalformer.model import CrystalFormer, KVCache, load_model
from crystalformer.tokenizer import Slot


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return CrystalTokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    m = CrystalFormer(ModelConfig.from_name("tiny"), tokenizer).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (the init zeroes biases)
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return m


@pytest.fixture(scope="module")
def crystals(fixture_crystals):
    return [c for _, c in fixture_crystals]


def _batch(tokenizer, crystals, with_composition=False):
    examples = []
    for c in crystals:
        e = tokenizer.encode(c, with_composition=with_composition)
        examples.append({"ids": e.ids, "values": e.values, "slots": e.slots, "num_atoms": e.num_atoms})
    return collate(examples, tokenizer.pad_id)


def test_causality(model, tokenizer, crystals):
    batch = _batch(tokenizer, crystals[:4])
    h, _ = model.hidden(batch["ids"], batch["values"], batch["slots"])
    t = 6
    ids, values = batch["ids"].clone(), batch["values"].clone()
    ids[:, t + 1:] = torch.randint(0, tokenizer.vocab_size, ids[:, t + 1:].shape)
    values[:, t + 1:] = torch.rand(values[:, t + 1:].shape)
    h2, _ = model.hidden(ids, values, batch["slots"])
    assert torch.equal(h[:, :t + 1], h2[:, :t + 1])
    assert not torch.allclose(h[:, t + 1:], h2[:, t + 1:])


def test_kv_cache_matches_full_sequence(model, tokenizer, crystals):
    batch = _batch(tokenizer, crystals[:5], with_composition=True)
    ids, values, slots = batch["ids"], batch["values"], batch["slots"]
    full, _ = model.hidden(ids, values, slots)
    cache = KVCache.empty(model.config, ids.shape[0])
    steps, sg = [], torch.zeros(ids.shape[0], dtype=torch.long)
    # a prefill of 3 positions, then one position at a time
    h, sgs = model.hidden(ids[:, :3], values[:, :3], slots[:, :3], cache=cache, sg_prev=sg)
    steps.append(h)
    sg = sgs[:, -1]
    for t in range(3, ids.shape[1]):
        h, sgs = model.hidden(ids[:, t:t + 1], values[:, t:t + 1], slots[:, t:t + 1], cache=cache, sg_prev=sg)
        steps.append(h)
        sg = sgs[:, -1]
    incremental = torch.cat(steps, dim=1)
    assert cache.length == ids.shape[1]
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)
    logits_full = model.token_head(full)
    torch.testing.assert_close(model.token_head(incremental), logits_full, atol=1e-5, rtol=1e-5)


def test_masked_categorical_puts_all_mass_on_legal_tokens(model, tokenizer, crystals):
    grammar = model.grammar
    rng = np.random.default_rng(0)
    batch = _batch(tokenizer, crystals[:8], with_composition=True)
    h, _ = model.hidden(batch["ids"], batch["values"], batch["slots"])
    for b in range(8):
        n = int(batch["mask"][b].sum())
        states = grammar.walk(batch["ids"][b, :n].numpy())
        for t in rng.choice(n, size=min(n, 6), replace=False):  # random legal prefixes ids[:t+1]
            allowed = torch.from_numpy(grammar.allowed(states[t + 1]).copy())
            p = model.token_distribution(h[b, t], allowed).log_probs().exp()
            assert float(p[allowed].sum()) == pytest.approx(1.0, abs=1e-6)
            assert float(p[~allowed].sum()) == 0.0


def test_mixtures_integrate_to_one(model, tokenizer):
    torch.manual_seed(1)
    h = torch.randn(4, model.config.d_model)
    x = torch.linspace(0, 1, 20001)[:-1]  # periodic trapezoid rule = rectangle rule
    for axis in ("P_x", "P_y", "P_z"):
        token = torch.full((4,), tokenizer.id(axis))
        dist = model.coord_distribution(h[:, None], token[:, None])  # (4, 1, K) parameters
        dens = dist.log_prob(x[None, :]).exp()  # (4, N)
        assert torch.allclose(dens.mean(1), torch.ones(4), atol=1e-4)
    lengths = torch.linspace(1e-3, 400, 400001)
    angles = torch.linspace(-400, 580, 400001)
    for name, grid in (("L_a", lengths), ("L_c", lengths), ("L_alpha", angles), ("L_gamma", angles)):
        token = torch.full((4,), tokenizer.id(name))
        dist = model.lattice_distribution(h[:, None], token[:, None])
        dens = dist.log_prob(grid[None, :]).exp().double()
        assert torch.allclose(torch.trapezoid(dens, grid.double(), dim=1), torch.ones(4, dtype=torch.float64),
                              atol=2e-3)


def test_von_mises_sampler_follows_its_density(model, tokenizer):
    torch.manual_seed(2)
    h = torch.randn(1, model.config.d_model)
    dist = model.coord_distribution(h, torch.tensor([tokenizer.id("P_x")]))
    big = type(dist)(dist.log_weights.expand(20000, -1), dist.loc.expand(20000, -1), dist.kappa.expand(20000, -1))
    x = big.sample(torch.Generator().manual_seed(0)).numpy()
    assert ((x >= 0) & (x < 1)).all()
    grid = torch.linspace(0, 1, 4001)
    cdf = np.concatenate([[0], np.cumsum(dist.log_prob(grid[:-1, None].T).exp().numpy().ravel()) / 4000])
    emp = np.searchsorted(np.sort(x), grid.numpy()) / len(x)
    assert np.abs(cdf - emp).max() < 0.02  # KS distance; 1.36 / sqrt(20000) ~ 0.01 at 5%
    again = big.sample(torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(x, again)


def test_log_prob_equals_sum_of_incremental_step_log_probs(model, tokenizer, crystals):
    """log_prob (teacher forcing, batch) == the per-step log-probs a KV-cached sampler would use."""
    for with_composition in (False, True):
        chosen = crystals[:6]
        lp = model.log_prob(chosen, with_composition=with_composition)
        for i, c in enumerate(chosen):
            enc = tokenizer.encode(c, with_composition=with_composition)
            ids = torch.as_tensor(enc.ids)[None]
            values = torch.as_tensor(enc.values, dtype=torch.float32)[None]
            slots = torch.as_tensor(enc.slots)[None]
            cache, sg, state = KVCache.empty(model.config, 1), torch.zeros(1, dtype=torch.long), model.grammar.start()
            state = model.grammar.step(state, int(ids[0, 0]))
            total = 0.0
            for t in range(ids.shape[1] - 1):
                h, sgs = model.hidden(ids[:, t:t + 1], values[:, t:t + 1], slots[:, t:t + 1], cache=cache, sg_prev=sg)
                sg = sgs[:, -1]
                nxt, slot = ids[0, t + 1], Slot(int(slots[0, t + 1]))
                if slot in (Slot.SPACE_GROUP, Slot.WYCKOFF, Slot.ELEMENT, Slot.STOP):
                    allowed = torch.from_numpy(model.grammar.structural(state).copy())
                    allowed[tokenizer.id("[COMP]")] = False
                    total += float(model.token_distribution(h[0, -1], allowed).log_prob(nxt))
                elif slot == Slot.COORD:
                    total += float(model.coord_distribution(h[0, -1], nxt).log_prob(values[0, t + 1]))
                elif slot == Slot.LATTICE:
                    total += float(model.lattice_distribution(h[0, -1], nxt).log_prob(values[0, t + 1]))
                state = model.grammar.step(state, int(nxt))
            assert total == pytest.approx(float(lp.total[i]), abs=1e-3)
        parts = sum(lp.by_slot.values())
        torch.testing.assert_close(parts, lp.total)


def test_log_prob_rejects_streams_the_grammar_forbids(tokenizer, crystals):
    model = CrystalFormer(ModelConfig.from_name("tiny", n_max=1), tokenizer)
    many = next(c for c in crystals if len(c.sites) > 1)
    with pytest.raises(ValueError, match="not legal"):
        model.log_prob([many])


def test_save_load_gives_identical_outputs(model, tokenizer, crystals, tmp_path):
    model.save(tmp_path / "m", {"note": "test"})
    loaded = load_model(tmp_path / "m")
    a = model.log_prob(crystals[:5])
    b = loaded.log_prob(crystals[:5])
    assert torch.equal(a.total, b.total)
    assert loaded.config == model.config
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "metadata.json",
                                                                  "model.safetensors", "tokenizer.json"]


def test_load_model_errors_name_the_problem(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="not a crystalformer model directory"):
        load_model(tmp_path)
    model.save(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"format": "crystalformer-model", "format_version": 1, '
                                                '"model": {"n_layer": 2, "bogus": 1}}')
    with pytest.raises(ValueError, match="bogus"):
        load_model(tmp_path / "m")
    model.save(tmp_path / "t")
    weights = tmp_path / "t" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="model.safetensors: cannot read the weights"):
        load_model(tmp_path / "t")


def test_config_rejects_contradictions():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.from_name("huge")


@pytest.mark.parametrize("with_composition", [False, True])
@pytest.mark.parametrize("n_max", [64, 2])
def test_device_masks_equal_the_grammar_at_every_discrete_target(tokenizer, crystals, with_composition, n_max):
    from crystalformer.grammar import Grammar
    from crystalformer.model.masks import StructuralMasks
    from crystalformer.tokenizer import Slot

    grammar = Grammar(tokenizer, n_max=n_max)
    tables = StructuralMasks(grammar)
    # streams with more than n_max sites are illegal; keep those the grammar accepts
    chosen = [c for c in crystals if len(c.sites) <= n_max]
    batch = _batch(tokenizer, chosen, with_composition=with_composition)
    ids, slots, valid = batch["ids"], batch["slots"], batch["mask"]
    discrete = valid & torch.isin(slots, torch.tensor([Slot.SPACE_GROUP, Slot.WYCKOFF, Slot.ELEMENT, Slot.STOP]))
    b, t = discrete.nonzero(as_tuple=True)
    fast = tables.target_masks(ids, slots, b, t).numpy()
    checked = 0
    for i in range(len(chosen)):
        n = int(valid[i].sum())
        oracle = grammar.masks(ids[i, :n].numpy(), composition=False)  # (n, V): legal before each token
        rows = (b == i).nonzero(as_tuple=True)[0]
        for r in rows.tolist():
            expected = oracle[int(t[r])].copy()
            expected[grammar.comp] = False  # the model never chooses [COMP]
            np.testing.assert_array_equal(fast[r], expected, err_msg=f"crystal {i} position {int(t[r])}")
            checked += 1
    assert checked > 5 * len(chosen)


def test_log_prob_is_the_same_with_precomputed_masks(model, tokenizer, crystals):
    from crystalformer.model import grammar_masks

    for with_composition in (False, True):
        batch = _batch(tokenizer, crystals[:40], with_composition=with_composition)
        fast = model.log_prob_batch(batch)
        slow = model.log_prob_batch({**batch, "allowed": grammar_masks(model.grammar, batch["ids"], batch["mask"])})
        torch.testing.assert_close(fast.total, slow.total)
