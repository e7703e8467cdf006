"""CrystalTokenizer against independent oracles: pyxtal's Wyckoff positions, pymatgen structures,
the ITA crystal-system number ranges and the Hugging Face tokenizer it wraps; malformed
vocabularies and token streams fail naming what is wrong and where."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from crystalformer import Crystal
from crystalformer.crystal import Site
from crystalformer.errors import CrystalError
from crystalformer.tokenizer import (
    AXIS_TOKENS,
    BOS,
    COMP,
    END_COMP,
    EOS,
    PAD,
    STOP,
    UNK,
    CrystalTokenizer,
    Slot,
    build_vocabulary,
)

# free lattice parameters by ITA number range: triclinic 6, monoclinic 4, orthorhombic 3,
# tetragonal 2, trigonal 2 (hexagonal axes), hexagonal 2, cubic 1
SYSTEM_RANGES = [(2, 6), (15, 4), (74, 3), (142, 2), (167, 2), (194, 2), (230, 1)]


def n_free_lattice(sg: int) -> int:
    return next(n for last, n in SYSTEM_RANGES if sg <= last)


@functools.lru_cache(maxsize=None)
def pyxtal_group(sg: int):
    from pyxtal.symmetry import Group

    return Group(sg)


def pyxtal_position(sg: int, letter: str):
    return pyxtal_group(sg).get_wyckoff_position(letter)


def pyxtal_free_axes(sg: int, letter: str) -> list[int]:
    """Generic axes (0=x, 1=y, 2=z) that pyxtal's first operation of the position depends on."""
    rot = pyxtal_position(sg, letter).ops[0].rotation_matrix
    return [j for j in range(3) if np.any(np.abs(rot[:, j]) > 1e-9)]


@pytest.fixture(scope="module")
def tok() -> CrystalTokenizer:
    return CrystalTokenizer()


@pytest.fixture(scope="module")
def nacl() -> Crystal:
    return Crystal(225, (Site("a", "Na"), Site("b", "Cl")), (5.69, 5.69, 5.69, 90.0, 90.0, 90.0))


def split_sites(words: list[str], slots: np.ndarray) -> list[tuple[str, str, list[str]]]:
    """(Wyckoff token, element, axis tokens) per site, read off the slot types alone."""
    sites = []
    for i, s in enumerate(slots):
        if s == Slot.WYCKOFF:
            sites.append((words[i], words[i + 1], []))
        elif s == Slot.COORD:
            sites[-1][2].append(words[i])
    return sites


# ---------------------------------------------------------------------- round trip and layout
@pytest.mark.parametrize("with_composition", [False, True])
def test_decode_inverts_encode_exactly(tok, fixture_crystals, with_composition):
    assert len(fixture_crystals) >= 20
    for mid, c in fixture_crystals:
        enc = tok.encode(c, with_composition=with_composition)
        assert tok.decode(enc.ids, enc.values) == c, mid
        padded = np.r_[enc.ids, [tok.pad_id] * 5]  # padding after [EOS] is ignored
        assert tok.decode(padded, np.r_[enc.values, np.zeros(5)]) == c, mid


@pytest.mark.parametrize("with_composition", [False, True])
def test_slots_values_and_ids_are_aligned(tok, fixture_crystals, with_composition):
    for mid, c in fixture_crystals:
        enc = tok.encode(c, with_composition=with_composition)
        T = len(enc)
        assert enc.ids.shape == enc.values.shape == enc.slots.shape == (T,)
        assert enc.ids.dtype == np.int64 and enc.slots.dtype == np.int64
        # each position's slot is the slot its token can occupy; prompt elements are element tokens
        expected = np.array([tok.token_slot(i) for i in enc.ids])
        prompt_el = enc.slots == Slot.COMP_ELEMENT
        assert np.all(expected[prompt_el] == Slot.ELEMENT), mid
        assert np.array_equal(enc.slots[~prompt_el], expected[~prompt_el]), mid
        continuous = np.isin(enc.slots, [Slot.COORD, Slot.LATTICE])
        assert np.all(enc.values[~continuous] == 0.0), mid
        coords = enc.values[enc.slots == Slot.COORD]
        assert np.all((coords >= 0.0) & (coords < 1.0)), mid
        assert np.all(enc.values[enc.slots == Slot.LATTICE] > 0.0), mid
        words = tok.to_words(enc.ids)
        assert words[0] == BOS and words[-1] == EOS
        assert (words[1] == COMP) == with_composition
        assert words[list(enc.slots).index(Slot.SPACE_GROUP)] == f"SG{c.space_group}"
        assert list(enc.slots).count(Slot.STOP) == 1


def test_coordinate_slots_match_pyxtal_degrees_of_freedom(tok, fixture_crystals):
    n_sites = n_coord = 0
    for mid, c in fixture_crystals:
        enc = tok.encode(c)
        sites = split_sites(tok.to_words(enc.ids), enc.slots)
        assert len(sites) == len(c.sites), mid
        for (w, el, axes), site in zip(sites, c.sites):
            letter = w[2:]
            assert letter == site.letter and el == site.element, mid
            assert len(axes) == pyxtal_position(c.space_group, letter).get_dof(), (mid, w)
            assert axes == [AXIS_TOKENS[a] for a in pyxtal_free_axes(c.space_group, letter)], (mid, w)
            n_sites += 1
            n_coord += len(axes)
    assert n_coord > 0 and n_sites > n_coord / 3  # the fixtures exercise fixed and free positions


def test_lattice_slots_match_crystal_system(tok, fixture_crystals):
    seen = set()
    for mid, c in fixture_crystals:
        enc = tok.encode(c)
        assert int(np.sum(enc.slots == Slot.LATTICE)) == n_free_lattice(c.space_group), mid
        names = [w for w, s in zip(tok.to_words(enc.ids), enc.slots) if s == Slot.LATTICE]
        assert names[0] == "L_a" and (len(names) == 1 or names[1] in ("L_b", "L_c")), mid
        seen.add(len(names))
    assert seen >= {1, 2, 3, 4, 6}


def test_num_atoms_counts_the_expanded_structure(tok, fixture_crystals):
    for mid, c in fixture_crystals:
        enc = tok.encode(c)
        assert enc.num_atoms == len(c.to_structure()), mid
        assert enc.num_atoms == sum(pyxtal_position(c.space_group, s.letter).multiplicity for s in c.sites), mid


# ---------------------------------------------------------------------- composition prompt
def test_composition_prompt_is_conventional_cell_composition(tok, fixture_crystals):
    from pymatgen.core import Element

    for mid, c in fixture_crystals:
        enc = tok.encode(c, with_composition=True)
        words = tok.to_words(enc.ids)
        end = words.index(END_COMP)
        assert words[1] == COMP
        prompt = words[2:end]
        assert list(enc.slots[2:end]) == [Slot.COMP_ELEMENT, Slot.COMP_COUNT] * (len(prompt) // 2)
        elements, counts = prompt[0::2], [int(n[1:]) for n in prompt[1::2]]
        z = [Element(e).Z for e in elements]
        assert z == sorted(set(z)), mid  # strictly increasing atomic number
        comp = c.to_structure().composition
        assert dict(zip(elements, counts)) == {el.symbol: int(n) for el, n in comp.items()}, mid
        # the prompt is the only difference from the unprompted stream
        plain = tok.encode(c)
        assert np.array_equal(np.r_[enc.ids[:1], enc.ids[end + 1:]], plain.ids)
        assert np.array_equal(np.r_[enc.values[:1], enc.values[end + 1:]], plain.values)


def test_nacl_stream(tok, nacl):
    enc = tok.encode(nacl, with_composition=True)
    assert " ".join(tok.to_words(enc.ids)) == "[BOS] [COMP] Na N4 Cl N4 [/COMP] SG225 W_a Na W_b Cl [STOP] L_a [EOS]"
    assert enc.values.tolist() == [0.0] * 13 + [5.69, 0.0]
    assert enc.num_atoms == 8


def test_prompt_count_beyond_vocabulary_is_refused(nacl):
    small = CrystalTokenizer(max_count=3)
    assert small.max_count == 3
    small.encode(nacl)  # without a prompt counts are not tokens
    with pytest.raises(CrystalError, match="N3") as err:
        small.encode(nacl, with_composition=True)
    assert err.value.reason == "too_many_atoms"


# ---------------------------------------------------------------------- Hugging Face vocabulary and files
def test_hf_tokenizer_agrees(tok, fixture_crystals):
    assert tok.hf.get_vocab_size() == tok.vocab_size == len(build_vocabulary())
    assert all(tok.hf.token_to_id(w) == i for i, w in enumerate(tok.vocab))
    for with_composition in (False, True):
        for mid, c in fixture_crystals:
            enc = tok.encode(c, with_composition=with_composition)
            words = tok.to_words(enc.ids)
            assert tok.hf.encode(words, is_pretokenized=True).ids == enc.ids.tolist(), mid
            assert tok.hf.encode(" ".join(words)).ids == enc.ids.tolist(), mid  # whitespace pre-tokenizer
    assert tok.hf.encode(["Xx"], is_pretokenized=True).ids == [tok.id(UNK)]


def test_save_load_round_trip(tok, fixture_crystals, tmp_path):
    path = tok.save(tmp_path / "ckpt")
    assert path.name == "tokenizer.json" and path.is_file()
    for source in (tmp_path / "ckpt", path):
        loaded = CrystalTokenizer.load(source)
        assert loaded.vocab == tok.vocab
        assert loaded.hf.get_vocab() == tok.hf.get_vocab()
        assert loaded.max_count == tok.max_count
        for mid, c in fixture_crystals:
            a, b = tok.encode(c, True), loaded.encode(c, True)
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.values, b.values), mid
            assert np.array_equal(a.slots, b.slots) and a.num_atoms == b.num_atoms, mid
            assert loaded.decode(a.ids, a.values) == c, mid


def test_small_vocabulary_round_trips(tmp_path):
    small = CrystalTokenizer(max_count=7)
    assert CrystalTokenizer.load(small.save(tmp_path)).vocab == small.vocab


def _rewrite_vocab(tok, tmp_path, edit) -> None:
    path = tok.save(tmp_path)
    doc = json.loads(path.read_text())
    doc["model"]["vocab"] = edit(dict(doc["model"]["vocab"]))
    path.write_text(json.dumps(doc))


def _drop(vocab: dict, token: str) -> dict:
    """Remove a token and close the gap in the ids (a consistent but incomplete vocabulary)."""
    gone = vocab.pop(token)
    return {t: (i - 1 if i > gone else i) for t, i in vocab.items()}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda v: _drop(v, "SG225"), "missing"),
        (lambda v: _drop(v, "W_c"), "missing"),
        (lambda v: _drop(v, "Fe"), "missing"),
        (lambda v: _drop(v, "N5"), "N1..N"),  # a gap in the count tokens
        (lambda v: {t: (i + 3 if i >= 10 else i) for t, i in v.items()}, "ids 0.."),  # a gap in the ids
        (lambda v: {**v, "SG1": v["SG2"]}, "ids 0.."),  # two tokens share an id
        (lambda v: {**v, "Xx": len(v)}, "Xx"),  # not an element
    ],
    ids=["no-SG225", "no-W_c", "no-Fe", "count-gap", "id-gap", "duplicate-id", "bad-element"],
)
def test_load_rejects_broken_vocabulary(tok, tmp_path, edit, message):
    _rewrite_vocab(tok, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as err:
        CrystalTokenizer.load(tmp_path)
    assert "tokenizer.json" in str(err.value)  # names the file


def test_load_rejects_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        CrystalTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        CrystalTokenizer.load(tmp_path)


def test_constructor_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicate"):
        CrystalTokenizer(vocab=build_vocabulary() + ["Fe"])


# ---------------------------------------------------------------------- decode errors
def _decode_error(tok, ids, values=None) -> str:
    with pytest.raises(ValueError) as err:
        tok.decode(ids, values)
    return str(err.value)


def test_truncated_streams_name_the_end(tok, fixture_crystals):
    for mid, c in fixture_crystals[::7]:
        enc = tok.encode(c, with_composition=True)
        for n in range(len(enc)):  # every proper prefix, the empty one included
            msg = _decode_error(tok, enc.ids[:n], enc.values[:n])
            assert f"at position {n}, got '<end>'" in msg, (mid, n, msg)


def test_unknown_and_out_of_range_tokens_name_their_position(tok, nacl):
    enc = tok.encode(nacl, with_composition=True)
    unk = tok.id(UNK)
    for pos in range(len(enc)):
        ids = enc.ids.copy()
        ids[pos] = unk
        assert f"position {pos}" in _decode_error(tok, ids, enc.values)
    for bad in (-1, tok.vocab_size, 10**9):  # -1 used to decode silently as the last token, L_gamma
        ids = enc.ids.copy()
        ids[4] = bad
        msg = _decode_error(tok, ids, enc.values)
        assert "position 4" in msg and str(bad) in msg


def test_wrong_axis_tokens_name_their_position(tok, fixture_crystals):
    checked = 0
    for mid, c in fixture_crystals:
        enc = tok.encode(c)
        for pos in np.flatnonzero(enc.slots == Slot.COORD):
            for other in AXIS_TOKENS:
                if other == tok.vocab[enc.ids[pos]]:
                    continue
                ids = enc.ids.copy()
                ids[pos] = tok.id(other)
                assert f"position {pos}" in _decode_error(tok, ids, enc.values), mid
                checked += 1
    assert checked > 50


def test_wrong_structure_names_the_position(tok, nacl):
    enc = tok.encode(nacl)  # [BOS] SG225 W_a Na W_b Cl [STOP] L_a [EOS]
    ids = list(enc.ids)

    def with_token(pos, word):
        out = list(ids)
        out[pos] = tok.id(word)
        return out

    cases = {
        0: EOS,
        1: "W_a",  # no space group
        2: "W_m",  # Fm-3m has letters a..l only
        3: "N4",  # a count is not an element
        6: "P_x",  # an axis where [STOP] or a letter belongs
        7: "L_c",  # cubic has L_a only
        8: STOP,  # [EOS] expected
    }
    for pos, word in cases.items():
        assert f"position {pos}" in _decode_error(tok, with_token(pos, word), None), word
    # the prompt holds element / count pairs only
    prompted = tok.to_words(tok.encode(nacl, with_composition=True).ids)
    for pos, word in {2: "N4", 3: "Cl", 4: "SG1", 5: END_COMP}.items():
        words = list(prompted)
        words[pos] = word
        assert f"position {pos}" in _decode_error(tok, tok.ids_of(words)), (pos, word)
    # only padding after [EOS]
    assert "position 9" in _decode_error(tok, ids + [tok.id(BOS)], None)
    assert tok.decode(ids + [tok.id(PAD)] * 3, list(enc.values) + [0.0] * 3) == nacl
    # [STOP] before any site
    assert "position 2" in _decode_error(tok, tok.ids_of([BOS, "SG221", STOP, "L_a", EOS]), [0, 0, 0, 4.0, 0])


def test_non_finite_values_are_refused(tok, fixture_crystals):
    mid, c = next((m, c) for m, c in fixture_crystals if c.sites[0].params)
    enc = tok.encode(c)
    for pos in np.flatnonzero(np.isin(enc.slots, [Slot.COORD, Slot.LATTICE]))[[0, -1]]:
        for bad in (np.nan, np.inf):
            values = enc.values.copy()
            values[pos] = bad
            assert f"position {pos}" in _decode_error(tok, enc.ids, values), mid
    assert "values" in _decode_error(tok, enc.ids, enc.values[:-1])
