"""CrystalTokenizer: exact round trips, alignment, the HF vocabulary, files, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crystalformer import Crystal, CrystalTokenizer
from crystalformer.symmetry import free_lattice_names, space_group
from crystalformer.tokenizer import CONTINUOUS_SLOTS, Slot


@pytest.fixture(scope="module")
def tok():
    return CrystalTokenizer()


def test_round_trip_is_exact(tok, fixture_crystals):
    assert len(fixture_crystals) >= 60
    for _, c in fixture_crystals:
        for with_comp in (False, True):
            enc = tok.encode(c, with_composition=with_comp)
            assert tok.decode(enc.ids, enc.values) == c


def test_alignment_and_slot_counts(tok, fixture_crystals):
    from pyxtal.symmetry import Group

    for _, c in fixture_crystals:
        enc = tok.encode(c)
        assert enc.ids.shape == enc.values.shape == enc.slots.shape
        continuous = np.isin(enc.slots, [int(s) for s in CONTINUOUS_SLOTS])
        assert np.all(enc.values[~continuous] == 0)
        for t, s in zip(enc.ids, enc.slots):  # every token sits in a slot its kind allows
            assert tok.token_slot(t) == s
        group = Group(c.space_group)
        expected_coords = sum(group.get_wyckoff_position(f"{space_group(c.space_group).position(s.letter).multiplicity}"
                                                         f"{s.letter}").get_dof() for s in c.sites)
        assert int((enc.slots == Slot.COORD).sum()) == expected_coords
        assert int((enc.slots == Slot.LATTICE).sum()) == len(free_lattice_names(c.crystal_system))
        assert int((enc.slots == Slot.WYCKOFF).sum()) == len(c.sites)
        assert enc.num_atoms == len(c.to_structure())


def test_composition_prompt(tok):
    c = Crystal.from_text("225 a Cs - b Cl - c Na - | 7.0")  # Na (11) < Cl (17) < Cs (55)
    words = tok.to_words(tok.encode(c, with_composition=True).ids)
    assert words[:9] == ["[BOS]", "[COMP]", "Na", "N8", "Cl", "N4", "Cs", "N4", "[/COMP]"]


def test_hf_tokenizer_agrees(tok, fixture_crystals):
    for _, c in fixture_crystals[:20]:
        enc = tok.encode(c, with_composition=True)
        words = tok.to_words(enc.ids)
        assert tok.hf.encode(words, is_pretokenized=True).ids == enc.ids.tolist()


def test_save_load(tok, tmp_path, fixture_crystals):
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    loaded = CrystalTokenizer.load(tmp_path)
    assert loaded.vocab == tok.vocab and loaded.max_count == tok.max_count
    for _, c in fixture_crystals[:10]:
        assert np.array_equal(loaded.encode(c, True).ids, tok.encode(c, True).ids)


def test_broken_vocabulary_is_rejected(tok, tmp_path):
    tok.save(tmp_path)
    doc = json.loads((tmp_path / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    del vocab["SG225"]
    doc["model"]["vocab"] = {t: i for i, t in enumerate(sorted(vocab, key=vocab.get))}
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="missing"):
        CrystalTokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        CrystalTokenizer.load(tmp_path / "nowhere")


def test_decode_errors_name_the_position(tok):
    c = Crystal.from_text("225 a Na - b Cl - | 5.69")
    enc = tok.encode(c)
    with pytest.raises(ValueError, match="position"):
        tok.decode(enc.ids[:-1], enc.values[:-1])  # truncated: no [EOS]
    bad = enc.ids.copy()
    bad[3] = tok.id("P_x")  # an axis token where an element belongs
    with pytest.raises(ValueError, match="position 3"):
        tok.decode(bad, enc.values)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.id("W_?")
    e = Crystal.from_text("225 e C 0.18 | 5.0")
    enc = tok.encode(e)
    bad = enc.ids.copy()
    bad[4] = tok.id("P_z")  # 24e is (x, 0, 0): its parameter comes from axis x
    with pytest.raises(ValueError, match="P_x"):
        tok.decode(bad, enc.values)
