"""The grammar against brute-force enumeration, the encodings, and random legal walks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from crystalformer import CrystalTokenizer
from crystalformer.grammar import INF, Grammar, IllegalTokenError, Phase, min_sites
from crystalformer.symmetry import space_group
from crystalformer.tokenizer import Slot, count_token, wyckoff_token


@pytest.fixture(scope="module")
def tok():
    return CrystalTokenizer()


def _prompted_state(grammar, tok, counts: dict[str, int]):
    from pymatgen.core.periodic_table import Element

    state = grammar.start()
    words = ["[BOS]", "[COMP]"]
    for el, n in sorted(counts.items(), key=lambda kv: Element(kv[0]).Z):
        words += [el, count_token(n)]
    words.append("[/COMP]")
    for w in words:
        state = grammar.step(state, tok.id(w))
    return state


# ---------------------------------------------------------------------- brute force
def enumerate_assignments(sg_number: int, counts: tuple[int, ...], n_max: int):
    """Every multiset of (position index, element index) realizing ``counts`` within n_max sites.

    Independent of the grammar's dynamic programme: a plain recursion over positions in which a
    position without free parameters holds at most one orbit, the others any number.
    """
    positions = [w for w in space_group(sg_number).wyckoff if w.multiplicity <= max(counts)]
    out = []

    def rec(i, remaining, chosen):
        if len(chosen) > n_max:
            return
        if all(r == 0 for r in remaining):
            out.append(tuple(chosen))
            return
        if i == len(positions):
            return
        wp = positions[i]
        m = wp.multiplicity
        if wp.dof == 0:
            rec(i + 1, remaining, chosen)
            for e, r in enumerate(remaining):
                if r >= m:
                    rec(i + 1, remaining[:e] + (r - m,) + remaining[e + 1:], chosen + [(wp.index, e)])
            return
        # any number of orbits per element on this position
        options = [range(r // m + 1) for r in remaining]
        for ks in itertools.product(*options):
            new = tuple(r - k * m for r, k in zip(remaining, ks))
            extra = [(wp.index, e) for e, k in enumerate(ks) for _ in range(k)]
            if len(chosen) + len(extra) <= n_max:
                rec(i + 1, new, chosen + extra)

    rec(0, tuple(counts), [])
    return out


CASES = [
    (1, (3, 2), 6), (2, (2, 4), 4), (12, (2, 6), 5), (62, (4, 4, 12), 6), (139, (2, 4, 8), 6),
    (166, (3, 6), 4), (191, (1, 2, 3), 5), (191, (3, 4), 4), (221, (1, 3), 4), (221, (2, 3), 3),
    (225, (4, 4), 2), (225, (4, 12), 4), (225, (8, 4, 4), 3), (227, (8, 16), 3), (227, (16, 8, 8), 3),
    (47, (2, 2, 1), 5), (123, (1, 1, 2), 4), (194, (2, 6), 3),
]


@pytest.mark.parametrize("sg_number, counts, n_max", CASES)
def test_min_sites_and_masks_match_brute_force(tok, sg_number, counts, n_max):
    elements = ["Li", "O", "Fe"][:len(counts)]
    solutions = enumerate_assignments(sg_number, counts, n_max)
    fewest = min_sites(sg_number, 0, tuple(sorted(counts)))
    if solutions:
        assert fewest == min(len(s) for s in solutions)
    else:
        assert fewest > n_max

    grammar = Grammar(tok, n_max=n_max)
    state = _prompted_state(grammar, tok, dict(zip(elements, counts)))
    sg_mask = grammar.allowed(state)
    assert sg_mask[tok.id(f"SG{sg_number}")] == bool(solutions)
    if not solutions:
        return
    state = grammar.step(state, tok.id(f"SG{sg_number}"))
    wps = space_group(sg_number).wyckoff
    # legal first letters: the smallest letter of some complete assignment
    expected_first = {wps[min(i for i, _ in s)].letter for s in solutions}
    mask = grammar.allowed(state)
    got_first = {wp.letter for wp in wps if mask[tok.id(wyckoff_token(wp.letter))]}
    assert got_first == expected_first
    assert not mask[tok.id("[STOP]")]
    # after each legal first letter: the legal elements
    for letter in sorted(expected_first):
        idx = space_group(sg_number).position(letter).index
        expected_el = {elements[e] for s in solutions if min(i for i, _ in s) == idx for i, e in s if i == idx}
        s2 = grammar.step(state, tok.id(wyckoff_token(letter)))
        m2 = grammar.allowed(s2)
        assert {el for el in elements if m2[tok.id(el)]} == expected_el, letter
        assert m2.sum() == len(expected_el)


def test_pyxtal_compatibility_agrees(tok):
    """pyxtal's own check (no site limit) agrees with ours at a large n_max."""
    from pyxtal.symmetry import Group

    rng = np.random.default_rng(3)
    for _ in range(60):
        sg_number = int(rng.integers(1, 231))
        counts = tuple(int(c) for c in rng.integers(1, 13, size=int(rng.integers(1, 4))))
        ours = min_sites(sg_number, 0, tuple(sorted(counts))) < INF
        theirs = Group(sg_number).check_compatible(list(counts))[0]
        assert ours == bool(theirs), (sg_number, counts)


def test_known_feasibility(tok):
    assert min_sites(225, 0, (4, 4)) == 2  # NaCl: Na4Cl4
    assert min_sites(225, 0, (1, 1)) == INF  # F centring: counts come in multiples of 4
    grammar = Grammar(tok, n_max=2)
    state = _prompted_state(grammar, tok, {"Li": 1, "Fe": 1, "O": 1})  # 3 elements need 3 sites
    assert not grammar.allowed(state)[grammar.sg_ids].any()


# ---------------------------------------------------------------------- encodings are legal
def test_every_encoded_crystal_is_legal(tok, fixture_crystals):
    grammar = Grammar(tok)
    for _, c in fixture_crystals:
        for with_comp in (False, True):
            ids = tok.encode(c, with_composition=with_comp).ids
            grammar.check(ids)
            masks = grammar.masks(ids)
            assert masks[np.arange(len(ids)), ids].all()


def test_letter_rules(tok):
    grammar = Grammar(tok, n_max=4)
    state = grammar.start()
    for w in ["[BOS]", "SG225"]:
        state = grammar.step(state, tok.id(w))
    assert not grammar.allowed(state)[tok.id("[STOP]")]  # no STOP before the first site
    s_a = grammar.step(grammar.step(state, tok.id("W_a")), tok.id("Na"))
    assert not grammar.allowed(s_a)[tok.id("W_a")]  # 4a has no free parameter: one orbit only
    assert grammar.allowed(s_a)[tok.id("W_b")] and grammar.allowed(s_a)[tok.id("[STOP]")]
    s_e = grammar.step(grammar.step(grammar.step(state, tok.id("W_e")), tok.id("C")), tok.id("P_x"))
    assert grammar.allowed(s_e)[tok.id("W_e")]  # 24e (x, 0, 0) can hold several orbits
    assert not grammar.allowed(s_e)[tok.id("W_d")]  # letters never decrease
    with pytest.raises(IllegalTokenError, match="position 3"):
        grammar.walk(tok.ids_of(["[BOS]", "SG225", "W_e", "W_e"]))
    with pytest.raises(IllegalTokenError, match="ends in phase"):
        grammar.check(tok.ids_of(["[BOS]", "SG225", "W_a", "Na"]))


def test_n_max_bites(tok):
    grammar = Grammar(tok, n_max=2)
    state = grammar.start()
    for w in ["[BOS]", "SG1", "W_a", "Fe", "P_x", "P_y", "P_z", "W_a", "Fe", "P_x", "P_y", "P_z"]:
        state = grammar.step(state, tok.id(w))
    mask = grammar.allowed(state)
    assert mask[tok.id("[STOP]")] and mask.sum() == 1


# ---------------------------------------------------------------------- random walks
def _random_walk(grammar, tok, rng, state=None, prefix=()):
    state = state or grammar.start()
    ids = list(prefix)
    for _ in range(2000):
        if state.phase == Phase.DONE:
            break
        options = np.flatnonzero(grammar.allowed(state))
        assert len(options) > 0, "the grammar reached a dead end"
        t = int(rng.choice(options))
        ids.append(t)
        state = grammar.step(state, t)
    assert state.phase == Phase.DONE
    slots = np.array([tok.token_slot(t) for t in ids])
    values = np.zeros(len(ids))
    values[slots == Slot.COORD] = rng.random(int((slots == Slot.COORD).sum()))
    for i in np.flatnonzero(slots == Slot.LATTICE):
        name = tok.vocab[ids[i]]
        values[i] = rng.uniform(60, 120) if name.endswith(("alpha", "beta", "gamma")) else rng.uniform(3, 10)
    return np.array(ids), values


def test_random_walks_decode_to_crystals(tok):
    rng = np.random.default_rng(0)
    grammar = Grammar(tok, n_max=4)
    after_bos = grammar.step(grammar.start(), tok.id("[BOS]"))
    for _ in range(100):
        # unconditional walks: a random composition prompt is mostly infeasible (tested elsewhere)
        sg = int(rng.choice(grammar.sg_ids))
        ids, values = _random_walk(grammar, tok, rng, state=grammar.step(after_bos, sg),
                                   prefix=(tok.id("[BOS]"), sg))
        crystal = tok.decode(ids, values)
        assert 1 <= len(crystal.sites) <= 4
        assert len(crystal.to_structure()) == crystal.num_atoms


def test_prompted_walks_hit_the_composition(tok):
    rng = np.random.default_rng(1)
    grammar = Grammar(tok, n_max=6)
    targets = [{"Na": 4, "Cl": 4}, {"Sr": 1, "Ti": 1, "O": 3}, {"Li": 2, "Mn": 1, "O": 3}, {"C": 8},
               {"Ba": 2, "Cu": 4, "O": 6}]
    for counts in targets:
        for _ in range(5):
            state = _prompted_state(grammar, tok, counts)
            ids, values = _random_walk(grammar, tok, rng, state=state)
            crystal = tok.decode(np.concatenate([[tok.id("[BOS]")], ids]), np.concatenate([[0.0], values]))
            assert crystal.composition == counts
            assert len(crystal.sites) <= 6
