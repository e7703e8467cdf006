"""The grammar of legal next tokens against the tokenizer's encodings, random legal walks,
brute-force enumeration of Wyckoff assignments (over pyxtal's positions) and pyxtal's own
composition checks."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest

from crystalformer.grammar import INF, Grammar, IllegalTokenError, Phase, min_sites
from crystalformer.symmetry import space_group
from crystalformer.tokenizer import BOS, COMP, END_COMP, STOP, UNK, CrystalTokenizer, Slot, count_token

BRUTE_GROUPS = (1, 2, 12, 62, 139, 166, 191, 221, 225, 227)
ELEMENTS = ("Li", "O", "Fe")  # increasing atomic number: prompt order = index order
CAP = 6  # the brute force enumerates assignments of at most CAP sites


@pytest.fixture(scope="module")
def tok() -> CrystalTokenizer:
    return CrystalTokenizer()


@pytest.fixture(scope="module")
def grammar(tok) -> Grammar:
    return Grammar(tok)


# ---------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def pyxtal_group(sg: int):
    from pyxtal.symmetry import Group

    return Group(sg)


@functools.lru_cache(maxsize=None)
def pyxtal_positions(sg: int) -> tuple[tuple[str, int, int], ...]:
    """(letter, multiplicity, dof) of every position, 'a' first, straight from pyxtal."""
    return tuple(sorted(((wp.letter, wp.multiplicity, int(wp.get_dof())) for wp in pyxtal_group(sg)),
                        key=lambda w: (w[0].isupper(), w[0])))  # Pmmm's 27th position 'A' comes after 'z'


def prompt_ids(tok, counts, elements=ELEMENTS) -> list[int]:
    words = [BOS, COMP]
    for el, n in zip(elements, counts):
        words += [el, count_token(n)]
    return list(tok.ids_of(words + [END_COMP]))


def run(grammar, ids):
    state = grammar.start()
    for t in ids:
        state = grammar.step(state, t)
    return state


def letters_allowed(grammar, tok, state) -> set[str]:
    """Legal Wyckoff letters, plus [STOP] when legal."""
    mask = grammar.allowed(state)
    out = {tok.vocab[i][2:] for i in np.flatnonzero(mask) if tok.vocab[i].startswith("W_")}
    return out | ({STOP} if mask[grammar.stop] else set())


def words_allowed(grammar, tok, state) -> set[str]:
    return {tok.vocab[i] for i in np.flatnonzero(grammar.allowed(state))}


def random_value(rng, word: str) -> float:
    if word in ("L_a", "L_b", "L_c"):
        return float(rng.uniform(3.0, 10.0))
    if word in ("L_alpha", "L_beta", "L_gamma"):
        return float(rng.uniform(60.0, 120.0))  # any three angles in (60, 120) make a valid cell
    return float(rng.random())  # a free fractional coordinate


def random_walk(grammar, tok, rng, prefix=(), choose_sg=None, max_len=400):
    """Extend ``prefix`` by uniformly chosen legal tokens until [EOS]; returns (ids, values).

    Unconditional walks never open a prompt (a random prompt is almost never feasible, and
    the grammar then offers no space group, see test_more_elements_than_sites_...).
    """
    ids, values = [int(t) for t in prefix], [0.0] * len(prefix)
    state = run(grammar, ids)
    while state.phase != Phase.DONE:
        assert len(ids) < max_len, "walk did not terminate"
        mask = grammar.allowed(state).copy()  # the grammar's cached masks are read-only
        assert mask.any(), f"dead end after {tok.to_words(ids)}"
        if state.phase == Phase.AFTER_BOS:
            mask[grammar.comp] = False
        if choose_sg is not None and state.phase in (Phase.AFTER_BOS, Phase.SPACE_GROUP):
            t = tok.id(f"SG{choose_sg}")
            assert mask[t]
        else:
            t = int(rng.choice(np.flatnonzero(mask)))
        continuous = tok.token_slot(t) in (Slot.COORD, Slot.LATTICE)
        values.append(random_value(rng, tok.vocab[t]) if continuous else 0.0)
        ids.append(t)
        state = grammar.step(state, t)
    return np.array(ids), np.array(values)


# ---------------------------------------------------------------------- brute force
def _element_options(wps, count: int, max_sites: int) -> list[tuple[int, ...]]:
    """Multisets of position indices (at most max_sites) whose multiplicities sum to ``count``."""
    out = []

    def rec(i, left, chosen):
        if left == 0:
            out.append(tuple(chosen))
            return
        if i == len(wps) or len(chosen) == max_sites:
            return
        _, m, dof = wps[i]
        k_max = min(left // m, max_sites - len(chosen), 1 if dof == 0 else max_sites)
        for k in range(k_max, -1, -1):
            rec(i + 1, left - k * m, chosen + [i] * k)

    rec(0, count, [])
    return out


@functools.lru_cache(maxsize=None)
def assignments(sg: int, counts: tuple[int, ...], max_sites: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Every multiset of (position index, element index) that realizes ``counts`` exactly with at
    most ``max_sites`` sites, a position without free parameters used at most once overall.
    Plain enumeration over pyxtal's positions: per element all multisets, then every combination."""
    wps = pyxtal_positions(sg)
    fixed = {i for i, w in enumerate(wps) if w[2] == 0}
    per_element = [_element_options(wps, c, max_sites) for c in counts]
    out = []

    def rec(e, used, sites, chosen):
        if e == len(counts):
            out.append(tuple(sorted(chosen)))
            return
        for option in per_element[e]:
            f = fixed.intersection(option)
            if sites + len(option) <= max_sites and not f & used:
                rec(e + 1, used | f, sites + len(option), chosen + [(p, e) for p in option])

    rec(0, frozenset(), 0, [])
    return tuple(out)


def completions(solutions, prefix):
    """Remainders of the solutions that extend the site sequence ``prefix``: the prefix is a
    sub-multiset and every other site sits at or after the prefix's last position."""
    last = prefix[-1][0] if prefix else -1
    need = Counter(prefix)
    for sol in solutions:
        rest = Counter(sol)
        rest.subtract(need)
        if min(rest.values(), default=0) < 0:
            continue
        rest = sorted((rest + Counter()).elements())
        if all(p >= last for p, _ in rest):
            yield rest


def oracle_letters(sg, solutions, prefix) -> set[str]:
    """A letter can come next iff it is the smallest position of some remainder; [STOP] iff nothing remains."""
    letters = pyxtal_positions(sg)
    out = {letters[rest[0][0]][0] if rest else STOP for rest in completions(solutions, prefix)}
    return out - {STOP} if not prefix else out


def oracle_elements(solutions, prefix, p) -> set[str]:
    out = set()
    for rest in completions(solutions, prefix):
        if rest and rest[0][0] == p:
            out |= {ELEMENTS[e] for q, e in rest if q == p}
    return out


def brute_cases():
    """(space group, counts) pairs: hand-picked plus random small compositions, seeded."""
    rng = np.random.default_rng(20240611)
    cases = []
    for sg in BRUTE_GROUPS:
        small = min(m for _, m, _ in pyxtal_positions(sg))
        cases += [(sg, (small,)), (sg, (small, small)), (sg, (2 * small, small)), (sg, (1, 1))]
        for _ in range(12):
            k = int(rng.integers(1, 4))
            if rng.random() < 0.6:  # multiples of the smallest orbit are the interesting ones
                counts = tuple(int(small * rng.integers(1, max(2, 16 // small + 1))) for _ in range(k))
            else:
                counts = tuple(int(rng.integers(1, 17)) for _ in range(k))
            cases.append((sg, counts))
    return sorted(set(cases))


def cases_of(sg: int) -> list[tuple[int, ...]]:
    return [counts for g, counts in brute_cases() if g == sg]


# ---------------------------------------------------------------------- fixture encodings
@pytest.mark.parametrize("with_composition", [False, True])
def test_fixture_encodings_are_legal_and_masks_allow_them(tok, grammar, fixture_crystals, with_composition):
    for mid, c in fixture_crystals:
        enc = tok.encode(c, with_composition=with_composition)
        grammar.check(enc.ids)
        padded = np.r_[enc.ids, [tok.pad_id] * 3]
        grammar.check(padded)
        masks = grammar.masks(padded)
        assert masks.shape == (len(padded), tok.vocab_size) and masks.dtype == bool
        assert masks[np.arange(len(padded)), padded].all(), mid
        # axis, lattice and [EOS] tokens leave exactly one choice; so does padding
        forced = np.isin(enc.slots, [Slot.COORD, Slot.LATTICE, Slot.EOS])
        assert (masks[: len(enc)][forced].sum(axis=1) == 1).all(), mid
        assert (masks[len(enc):].sum(axis=1) == 1).all()


def test_fixture_encodings_respect_n_max(tok, fixture_crystals):
    for mid, c in fixture_crystals:
        enc = tok.encode(c, with_composition=True)
        n = len(c.sites)
        assert Grammar(tok, n_max=n).is_legal(enc.ids), mid
        if n > 1:
            with pytest.raises(IllegalTokenError, match="position"):
                Grammar(tok, n_max=n - 1).check(enc.ids)


def test_grammar_ignores_vocabulary_order(tok, fixture_crystals):
    perm = np.random.default_rng(7).permutation(tok.vocab_size)
    shuffled = CrystalTokenizer(vocab=[tok.vocab[i] for i in perm])
    g, gs = Grammar(tok, n_max=30), Grammar(shuffled, n_max=30)
    for mid, c in fixture_crystals[::4]:
        a, b = tok.encode(c, True), shuffled.encode(c, True)
        assert tok.to_words(a.ids) == shuffled.to_words(b.ids)
        assert np.array_equal(g.masks(a.ids)[:, perm], gs.masks(b.ids)), mid  # same legal words everywhere


# ---------------------------------------------------------------------- random legal walks
@pytest.mark.parametrize("n_max", [3, 4])
def test_unconditional_walks_terminate_and_decode(tok, n_max):
    grammar = Grammar(tok, n_max=n_max)
    rng = np.random.default_rng(n_max)
    full = 0
    for _ in range(150):
        ids, values = random_walk(grammar, tok, rng)
        c = tok.decode(ids, values)
        assert 1 <= len(c.sites) <= n_max
        full += len(c.sites) == n_max
        sg = space_group(c.space_group)
        idx = [sg.position(s.letter).index for s in c.sites]
        assert idx == sorted(idx)  # letters non-decreasing
        fixed = [i for i, s in zip(idx, c.sites) if not s.params]
        assert len(fixed) == len(set(fixed))  # fixed positions at most once
        mult = {w[0]: w[1] for w in pyxtal_positions(c.space_group)}
        assert len(c.to_structure()) == c.num_atoms == sum(mult[s.letter] for s in c.sites)
        again = tok.encode(c)
        assert np.array_equal(again.ids, ids) and np.array_equal(again.values, values)
    assert full > 10  # walks ran into n_max, so the limit was exercised


def random_feasible_composition(rng, max_sites: int):
    """A space group and a composition built from a random Wyckoff assignment: feasible by construction."""
    while True:
        sg = int(rng.integers(1, 231))
        wps = [w for w in pyxtal_positions(sg) if w[1] <= 24]
        if not wps:
            continue
        k = int(rng.integers(1, max_sites + 1))
        elements = sorted(rng.choice(len(ELEMENTS), size=int(rng.integers(1, min(3, k) + 1)), replace=False))
        counts, used = Counter(), set()
        for i in range(k):
            letter, m, dof = wps[int(rng.integers(len(wps)))]
            if dof == 0 and letter in used:
                continue
            used.add(letter)
            counts[elements[i % len(elements)]] += m
        if len(counts) == len(elements):
            return sg, [ELEMENTS[e] for e in elements], [counts[e] for e in elements]


@pytest.mark.parametrize("n_max", [3, 4])
def test_prompted_walks_end_with_the_prompted_composition(tok, n_max):
    grammar = Grammar(tok, n_max=n_max)
    rng = np.random.default_rng(100 + n_max)
    for _ in range(60):
        sg, elements, counts = random_feasible_composition(rng, n_max)
        prefix = prompt_ids(tok, counts, elements)
        for choose in (sg, None):  # the generating group, then any group the grammar allows
            ids, values = random_walk(grammar, tok, rng, prefix=prefix, choose_sg=choose)
            c = tok.decode(ids, values)
            assert len(c.sites) <= n_max
            assert c.composition == dict(zip(elements, counts))
            comp = c.to_structure().composition
            assert {el.symbol: int(n) for el, n in comp.items()} == dict(zip(elements, counts))
            assert np.array_equal(tok.encode(c, with_composition=True).ids, ids)


# ---------------------------------------------------------------------- letter rules
def test_letter_rules_in_fm3m(tok, grammar):
    s = run(grammar, tok.ids_of([BOS, "SG225"]))
    assert letters_allowed(grammar, tok, s) == set("abcdefghijkl")  # no [STOP] before the first site
    with pytest.raises(IllegalTokenError):
        grammar.step(s, tok.id(STOP))
    with pytest.raises(IllegalTokenError):
        grammar.step(s, tok.id("W_m"))  # not a position of Fm-3m
    after_a = run(grammar, tok.ids_of([BOS, "SG225", "W_a", "Na"]))
    assert letters_allowed(grammar, tok, after_a) == set("bcdefghijkl") | {STOP}  # 4a holds one orbit
    after_e = run(grammar, tok.ids_of([BOS, "SG225", "W_e", "Na", "P_x"]))
    assert letters_allowed(grammar, tok, after_e) == set("efghijkl") | {STOP}  # 24e (x,0,0) may repeat
    run(grammar, tok.ids_of([BOS, "SG225", "W_e", "Na", "P_x", "W_e", "Cl", "P_x"]))
    with pytest.raises(IllegalTokenError, match="position 4"):
        grammar.check(tok.ids_of([BOS, "SG225", "W_a", "Na", "W_a"]))


def test_letters_belong_to_the_space_group(tok, grammar):
    for sg in (1, 2, 47, 62, 191, 230):
        s = run(grammar, tok.ids_of([BOS, f"SG{sg}"]))
        assert letters_allowed(grammar, tok, s) == {w[0] for w in pyxtal_positions(sg)}
    assert len(pyxtal_positions(47)) == 27  # Pmmm reaches 'A'


def test_n_max_leaves_only_stop(tok):
    grammar = Grammar(tok, n_max=2)
    s = run(grammar, tok.ids_of([BOS, "SG1", "W_a", "C", "P_x", "P_y", "P_z", "W_a", "C", "P_x", "P_y", "P_z"]))
    assert words_allowed(grammar, tok, s) == {STOP}
    with pytest.raises(ValueError, match="n_max"):
        Grammar(tok, n_max=0)


def test_illegal_token_names_its_position(tok, grammar, fixture_crystals):
    enc = tok.encode(fixture_crystals[0][1], with_composition=True)
    for pos in range(len(enc)):
        ids = enc.ids.copy()
        ids[pos] = tok.id(UNK)
        with pytest.raises(IllegalTokenError, match=f"^position {pos}:"):
            grammar.check(ids)
    with pytest.raises(IllegalTokenError, match="before"):
        grammar.check(enc.ids[:-1])  # no [EOS]
    for bad in (tok.vocab_size + 5, -1):  # ids outside the vocabulary used to crash the message (IndexError)
        with pytest.raises(IllegalTokenError, match="^position 1:"):
            grammar.check(np.r_[enc.ids[:1], bad])
    with pytest.raises(IllegalTokenError, match=f"^position {len(enc)}:"):
        grammar.check(np.r_[enc.ids, tok.id(BOS)])  # only padding after [EOS]


def test_prompt_elements_strictly_increase(tok, grammar):
    allowed = words_allowed(grammar, tok, run(grammar, tok.ids_of([BOS, COMP, "O", "N2"])))
    assert "F" in allowed and "O" not in allowed and "Li" not in allowed and END_COMP in allowed
    assert END_COMP not in words_allowed(grammar, tok, run(grammar, tok.ids_of([BOS, COMP])))


# ---------------------------------------------------------------------- composition vs brute force
@pytest.mark.parametrize("sg", BRUTE_GROUPS)
def test_min_sites_matches_brute_force(sg):
    cases = cases_of(sg)
    assert len(cases) >= 10
    for counts in cases:
        brute = min((len(s) for s in assignments(sg, counts, CAP)), default=CAP + 1)
        assert min(min_sites(sg, 0, tuple(sorted(counts))), CAP + 1) == brute, counts


@pytest.mark.parametrize("sg", BRUTE_GROUPS)
def test_first_letters_and_elements_match_brute_force(tok, sg):
    feasible = 0
    for n_max in (2, 4, CAP):
        grammar = Grammar(tok, n_max=n_max)
        for counts in cases_of(sg):
            sols = [s for s in assignments(sg, counts, CAP) if len(s) <= n_max]
            s = run(grammar, prompt_ids(tok, counts))
            assert bool(grammar.allowed(s)[tok.id(f"SG{sg}")]) == bool(sols), (n_max, counts)
            if not sols:
                continue
            feasible += 1
            s = grammar.step(s, tok.id(f"SG{sg}"))
            first = letters_allowed(grammar, tok, s)
            assert first == oracle_letters(sg, sols, []), (n_max, counts)
            for p, (letter, _, _) in enumerate(pyxtal_positions(sg)):
                if letter in first:
                    after = grammar.step(s, tok.id(f"W_{letter}"))
                    assert words_allowed(grammar, tok, after) == oracle_elements(sols, [], p), (n_max, counts, letter)
    assert feasible >= 5


@pytest.mark.parametrize("sg", BRUTE_GROUPS)
def test_prompted_walks_match_brute_force_at_every_step(tok, sg):
    """Random legal walks; at every site the grammar's letters and elements equal the brute-force ones."""
    rng = np.random.default_rng(sg)
    letters = [w[0] for w in pyxtal_positions(sg)]
    steps = 0
    for n_max in (3, CAP):
        grammar = Grammar(tok, n_max=n_max)
        for counts in cases_of(sg):
            sols = [s for s in assignments(sg, counts, CAP) if len(s) <= n_max]
            if not sols:
                continue
            for _ in range(3):
                s = grammar.step(run(grammar, prompt_ids(tok, counts)), tok.id(f"SG{sg}"))
                prefix = []
                while True:
                    legal = letters_allowed(grammar, tok, s)
                    assert legal == oracle_letters(sg, sols, prefix), (counts, prefix)
                    choice = sorted(legal)[rng.integers(len(legal))]
                    if choice == STOP:
                        break
                    p = letters.index(choice)
                    s = grammar.step(s, tok.id(f"W_{choice}"))
                    els = words_allowed(grammar, tok, s)
                    assert els == oracle_elements(sols, prefix, p), (counts, prefix, choice)
                    el = sorted(els)[rng.integers(len(els))]
                    s = grammar.step(s, tok.id(el))
                    while s.phase == Phase.FORCED:
                        s = grammar.step(s, s.pending[0])
                    prefix.append((p, ELEMENTS.index(el)))
                    steps += 1
                assert tuple(sorted(prefix)) in sols
    assert steps > 10


def test_space_group_mask_matches_pyxtal_with_site_limit(tok):
    """pyxtal's own subset sum over multiplicities (get_wyc_from_comp), bounding the number of sites."""
    from pyxtal.util import get_wyc_from_comp

    rng = np.random.default_rng(3)
    compositions = [(4, 4), (1, 1), (2, 6), (3,), (8, 8, 4), (1, 2, 3), (12,), (6, 6)]
    compositions += [tuple(int(x) for x in rng.integers(1, 13, size=rng.integers(1, 4))) for _ in range(4)]
    for n_max in (2, 3, 5):
        grammar = Grammar(tok, n_max=n_max)
        for counts in compositions:
            mask = grammar.allowed(run(grammar, prompt_ids(tok, counts)))
            assert mask.sum() == mask[grammar.sg_ids].sum()  # only space groups
            expected = []
            for sg in range(1, 231):
                base, upper = pyxtal_group(sg)._get_base_and_upper_bounds()
                expected.append(bool(get_wyc_from_comp(list(counts), base, upper, max_wyc=1, num_wp=(1, n_max))))
            assert mask[grammar.sg_ids].tolist() == expected, (n_max, counts)


def test_min_sites_feasibility_matches_pyxtal_check_compatible():
    """pyxtal.symmetry.Group.check_compatible ignores the number of sites: compare with min_sites < INF."""
    cases = sorted({(sg, tuple(sorted(c))) for sg, c in brute_cases()})
    cases += [(sg, c) for sg in (4, 47, 65, 123, 160, 194, 205, 229) for c in ((1,), (2, 2), (4, 12), (3, 3, 6))]
    agree = Counter()
    for sg, counts in cases:
        ours = min_sites(sg, 0, counts) < INF
        assert ours == pyxtal_group(sg).check_compatible(list(counts))[0], (sg, counts)
        agree[ours] += 1
    assert agree[True] > 10 and agree[False] > 10


# ---------------------------------------------------------------------- known answers
def test_rock_salt_known_answers(tok, grammar):
    sg225 = tok.id("SG225")
    na4cl4 = run(grammar, tok.ids_of([BOS, COMP, "Na", "N4", "Cl", "N4", END_COMP]))
    assert grammar.allowed(na4cl4)[sg225]
    assert min_sites(225, 0, (4, 4)) == 2
    assert pyxtal_group(225).check_compatible([4, 4])[0]
    nacl = run(grammar, tok.ids_of([BOS, COMP, "Na", "N1", "Cl", "N1", END_COMP]))
    assert not grammar.allowed(nacl)[sg225]  # F centring: every count is a multiple of 4
    assert grammar.allowed(nacl)[tok.id("SG221")]  # Pm-3m: 1a + 1b
    assert min_sites(225, 0, (1, 1)) == INF
    # in Fm-3m only 4a and 4b hold four atoms: 4a comes first, then 4b for the other element
    s = grammar.step(na4cl4, sg225)
    assert letters_allowed(grammar, tok, s) == {"a"}
    assert words_allowed(grammar, tok, grammar.step(s, tok.id("W_a"))) == {"Na", "Cl"}
    s = run(grammar, tok.ids_of([BOS, COMP, "Na", "N4", "Cl", "N4", END_COMP, "SG225", "W_a", "Na"]))
    assert letters_allowed(grammar, tok, s) == {"b"}
    assert words_allowed(grammar, tok, grammar.step(s, tok.id("W_b"))) == {"Cl"}
    s = run(grammar, tok.ids_of([BOS, COMP, "Na", "N4", "Cl", "N4", END_COMP, "SG225", "W_a", "Na", "W_b", "Cl"]))
    assert letters_allowed(grammar, tok, s) == {STOP}


@pytest.mark.parametrize("n_max, elements", [(1, ("Na", "Cl")), (2, ("Li", "O", "Fe"))])
def test_more_elements_than_sites_allows_no_space_group(tok, n_max, elements):
    grammar = Grammar(tok, n_max=n_max)
    s = run(grammar, prompt_ids(tok, [4] * len(elements), elements))
    assert s.phase == Phase.SPACE_GROUP
    assert not grammar.allowed(s).any()
    assert Grammar(tok, n_max=len(elements)).allowed(s)[grammar.sg_ids].sum() > 100


def test_stop_only_when_the_prompt_is_used_up(tok, grammar):
    s = run(grammar, tok.ids_of([BOS, COMP, "O", "N2", END_COMP, "SG2"]))
    # P-1: 1a..1h hold one atom each and cannot repeat, so after 1h only 2i is left (3 atoms): no 'h'
    assert letters_allowed(grammar, tok, s) == set("abcdefgi")
    s = run(grammar, tok.ids_of([BOS, COMP, "O", "N2", END_COMP, "SG2", "W_a", "O"]))
    assert letters_allowed(grammar, tok, s) == set("bcdefgh")
    s = run(grammar, tok.ids_of([BOS, COMP, "O", "N2", END_COMP, "SG2", "W_a", "O", "W_b", "O"]))
    assert letters_allowed(grammar, tok, s) == {STOP}
    s = run(grammar, tok.ids_of([BOS, COMP, "O", "N2", END_COMP, "SG2", "W_i"]))
    assert words_allowed(grammar, tok, s) == {"O"}
    with pytest.raises(IllegalTokenError):
        grammar.step(s, tok.id("Fe"))  # not in the prompt
