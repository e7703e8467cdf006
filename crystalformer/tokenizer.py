"""CrystalTokenizer: Crystal <-> discrete token ids + aligned continuous values + slot types.

Token stream (DESIGN section 4)::

    [BOS] ([COMP] El N<n> El N<n> ... [/COMP])? SG<n> (W_<letter> El P_x|P_y|P_z ...)* [STOP] L_<name> ... [EOS]

- ``SG<n>``: one of 230 space-group tokens.
- Per site: its Wyckoff letter ``W_a``.., its element ``Fe``.., then one slot per FREE parameter
  of that position, whose token names the generic axis it comes from (``P_x``, ``P_y`` or ``P_z``)
  and whose continuous value is the fractional free parameter in [0, 1).
- ``L_a`` .. ``L_gamma``: the crystal system's free lattice parameters, in this order
  (a, b, c, alpha, beta, gamma restricted to the free ones). Values are in physical units:
  lengths in Å, angles in degrees. The number of atoms in the conventional cell is returned
  beside the tokens (``Encoding.num_atoms``) so that a model can normalize lengths by
  N^(1/3) itself; keeping physical units here makes ``decode(encode(c)) == c`` exact.
- Optional composition prompt: elements in order of atomic number, each followed by its
  count in the conventional cell (``N1`` .. ``N<max_count>``).

Continuous slots (``COORD``, ``LATTICE``) carry their value in ``values``; every other
position has value 0. The discrete vocabulary is a Hugging Face ``tokenizers`` WordLevel model
saved as ``tokenizer.json``.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .crystal import Crystal, Site
from .elements import MAX_Z, SYMBOLS, atomic_number
from .errors import CrystalError
from .symmetry import (
    LATTICE_NAMES,
    LETTERS,
    expand_lattice,
    free_lattice_names,
    space_group,
)

PAD, UNK, BOS, EOS, STOP, COMP, END_COMP = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[STOP]", "[COMP]", "[/COMP]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, STOP, COMP, END_COMP)
AXIS_TOKENS = ("P_x", "P_y", "P_z")  # free parameter from generic axis x, y or z
DEFAULT_MAX_COUNT = 256  # largest per-element count in a composition prompt (conventional cell)


class Slot(enum.IntEnum):
    """What a position in the token stream is; stored beside the ids."""

    PAD = 0
    BOS = 1
    COMP = 2  # [COMP]
    COMP_ELEMENT = 3
    COMP_COUNT = 4
    END_COMP = 5  # [/COMP]
    SPACE_GROUP = 6
    WYCKOFF = 7
    ELEMENT = 8
    COORD = 9
    STOP = 10
    LATTICE = 11
    EOS = 12


CONTINUOUS_SLOTS = (Slot.COORD, Slot.LATTICE)


def sg_token(number: int) -> str:
    return f"SG{number}"


def wyckoff_token(letter: str) -> str:
    return f"W_{letter}"


def count_token(n: int) -> str:
    return f"N{n}"


def lattice_token(name: str) -> str:
    return f"L_{name}"


def element_symbols() -> tuple[str, ...]:
    return SYMBOLS[:MAX_Z]


def build_vocabulary(max_count: int = DEFAULT_MAX_COUNT) -> list[str]:
    """The ordered discrete vocabulary (ids are list positions)."""
    return [
        *SPECIAL_TOKENS,
        *(sg_token(n) for n in range(1, 231)),
        *(wyckoff_token(letter) for letter in LETTERS),
        *element_symbols(),
        *(count_token(n) for n in range(1, max_count + 1)),
        *AXIS_TOKENS,
        *(lattice_token(name) for name in LATTICE_NAMES),
    ]


@dataclass(frozen=True)
class Encoding:
    """One encoded crystal: aligned arrays of length T."""

    ids: np.ndarray  # (T,) int64 token ids
    values: np.ndarray  # (T,) float64; the continuous value at COORD / LATTICE slots, else 0
    slots: np.ndarray  # (T,) int64 Slot of each position
    num_atoms: int  # atoms in the conventional cell

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class CrystalTokenizer:
    """Translate between :class:`Crystal` and token streams; see module docstring."""

    def __init__(self, vocab: list[str] | None = None, max_count: int = DEFAULT_MAX_COUNT):
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import WhitespaceSplit

        vocab = list(vocab) if vocab is not None else build_vocabulary(max_count)
        _check_vocabulary(vocab)
        self.hf = Tokenizer(WordLevel({tok: i for i, tok in enumerate(vocab)}, unk_token=UNK))
        self.hf.pre_tokenizer = WhitespaceSplit()
        self.vocab = tuple(vocab)
        self.token_to_id = {tok: i for i, tok in enumerate(vocab)}
        self.max_count = sum(1 for t in vocab if t.startswith("N") and t[1:].isdigit())
        self._slot_of_id = np.array([_slot_of_token(t) for t in vocab], dtype=np.int64)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def id(self, token: str) -> int:
        try:
            return self.token_to_id[token]
        except KeyError:
            raise ValueError(f"token {token!r} is not in the vocabulary") from None

    def ids_of(self, tokens) -> np.ndarray:
        return np.array([self.id(t) for t in tokens], dtype=np.int64)

    def token_slot(self, token_id: int) -> Slot:
        """The slot a token id can occupy (count and element tokens: their prompt/site role is positional)."""
        return Slot(int(self._slot_of_id[token_id]))

    @functools.cached_property
    def pad_id(self) -> int:
        return self.id(PAD)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, crystal: Crystal, with_composition: bool = False) -> Encoding:
        """Token ids, aligned continuous values and slot types of ``crystal``."""
        sg = space_group(crystal.space_group)
        tokens: list[str] = [BOS]
        values: list[float] = [0.0]
        slots: list[Slot] = [Slot.BOS]
        if with_composition:
            tokens.append(COMP)
            slots.append(Slot.COMP)
            for element, n in crystal.composition.items():
                if n > self.max_count:
                    raise CrystalError("too_many_atoms", f"{n} {element} atoms in {crystal.formula} exceed the "
                                                         f"prompt's largest count N{self.max_count}")
                tokens += [element, count_token(n)]
                slots += [Slot.COMP_ELEMENT, Slot.COMP_COUNT]
            tokens.append(END_COMP)
            slots.append(Slot.END_COMP)
            values += [0.0] * (len(tokens) - len(values))
        tokens.append(sg_token(sg.number))
        slots.append(Slot.SPACE_GROUP)
        values.append(0.0)
        for site in crystal.sites:
            wp = sg.position(site.letter)
            tokens += [wyckoff_token(wp.letter), site.element]
            slots += [Slot.WYCKOFF, Slot.ELEMENT]
            values += [0.0, 0.0]
            for axis, p in zip(wp.free_axes, site.params):
                tokens.append(AXIS_TOKENS[axis])
                slots.append(Slot.COORD)
                values.append(float(p))
        tokens.append(STOP)
        slots.append(Slot.STOP)
        values.append(0.0)
        for name, v in zip(free_lattice_names(sg.crystal_system), crystal.free_lattice):
            tokens.append(lattice_token(name))
            slots.append(Slot.LATTICE)
            values.append(float(v))
        tokens.append(EOS)
        slots.append(Slot.EOS)
        values.append(0.0)
        return Encoding(self.ids_of(tokens), np.asarray(values, dtype=np.float64),
                        np.asarray(slots, dtype=np.int64), crystal.num_atoms)

    def decode(self, ids, values=None) -> Crystal:
        """The Crystal of a complete token stream (padding after [EOS] is ignored).

        Raises ValueError naming the position of the first token that breaks the stream's
        structure (use :mod:`crystalformer.grammar` to check legality token by token).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        values = np.zeros(len(ids)) if values is None else np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape != ids.shape:
            raise ValueError(f"cannot decode token stream: {len(ids)} ids but {len(values)} values")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if bad.size:  # a negative id would otherwise index the vocabulary from its end
            raise ValueError(f"cannot decode token stream: id {int(ids[bad[0]])} at position {int(bad[0])} is not "
                             f"in the vocabulary (0..{self.vocab_size - 1})")
        toks = [self.vocab[i] for i in ids]
        pos = 0

        def expect(cond: bool, what: str):
            if not cond:
                got = toks[pos] if pos < len(toks) else "<end>"
                raise ValueError(f"cannot decode token stream: expected {what} at position {pos}, got {got!r} "
                                 f"in {' '.join(toks)!r}")

        def slot_is(slot: Slot) -> bool:
            return pos < len(toks) and self.token_slot(ids[pos]) == slot

        def value() -> float:
            expect(bool(np.isfinite(values[pos])), f"a finite value (got {values[pos]})")
            return float(values[pos])

        expect(pos < len(toks) and toks[pos] == BOS, BOS)
        pos += 1
        if pos < len(toks) and toks[pos] == COMP:  # the prompt's structure only; grammar checks its counts
            pos += 1
            while not (pos < len(toks) and toks[pos] == END_COMP):
                expect(slot_is(Slot.ELEMENT), f"a prompt element or {END_COMP}")
                pos += 1
                expect(slot_is(Slot.COMP_COUNT), "a prompt count")
                pos += 1
            pos += 1
        expect(slot_is(Slot.SPACE_GROUP), "a space-group token")
        sg = space_group(int(toks[pos][2:]))
        pos += 1
        letters = {wyckoff_token(wp.letter) for wp in sg.wyckoff}
        sites = []
        while slot_is(Slot.WYCKOFF):
            expect(toks[pos] in letters, f"{STOP} or a Wyckoff letter of space group {sg.number}")
            wp = sg.position(toks[pos][2:])
            pos += 1
            expect(pos < len(toks) and self.token_slot(ids[pos]) == Slot.ELEMENT, "an element")
            element = toks[pos]
            pos += 1
            params = []
            for axis in wp.free_axes:
                expect(pos < len(toks) and toks[pos] == AXIS_TOKENS[axis], AXIS_TOKENS[axis])
                params.append(value())
                pos += 1
            sites.append(Site(wp.letter, element, tuple(params)))
        expect(pos < len(toks) and toks[pos] == STOP, f"{STOP} or a Wyckoff letter of space group {sg.number}")
        expect(bool(sites), f"a Wyckoff letter of space group {sg.number} (a crystal needs at least one site)")
        pos += 1
        free = []
        for name in free_lattice_names(sg.crystal_system):
            expect(pos < len(toks) and toks[pos] == lattice_token(name), lattice_token(name))
            free.append(value())
            pos += 1
        expect(pos < len(toks) and toks[pos] == EOS, EOS)
        pos += 1
        while pos < len(toks):  # only padding may follow [EOS]
            expect(toks[pos] == PAD, f"{PAD} after {EOS}")
            pos += 1
        lattice = expand_lattice(free, sg.crystal_system)
        return Crystal(sg.number, tuple(sites), tuple(float(v) for v in lattice))

    def to_words(self, ids) -> list[str]:
        return [self.vocab[int(i)] for i in np.asarray(ids).reshape(-1)]

    # ------------------------------------------------------------------ files
    def save(self, directory) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "tokenizer.json"
        tmp = path.with_suffix(".json.tmp")
        self.hf.save(str(tmp))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory) -> CrystalTokenizer:
        """Read ``tokenizer.json`` from a directory (or the file itself)."""
        from tokenizers import Tokenizer

        path = Path(directory)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        try:
            hf = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for unreadable files
            raise ValueError(f"cannot read tokenizer {path}: {err}") from None
        token_to_id = hf.get_vocab()
        vocab = sorted(token_to_id, key=token_to_id.get)
        # ids are list positions here: a gap or a repeated id in the file would silently shift every later token
        if sorted(token_to_id.values()) != list(range(len(vocab))):
            raise ValueError(f"tokenizer vocabulary in {path} must use the ids 0..{len(vocab) - 1} once each; "
                             f"first bad id at rank {_first_mismatch(sorted(token_to_id.values()))}")
        try:
            return cls(vocab=vocab)
        except ValueError as err:
            raise ValueError(f"tokenizer vocabulary in {path} is not a CrystalTokenizer vocabulary: {err}") from None


def _slot_of_token(token: str) -> int:
    fixed = {PAD: Slot.PAD, UNK: Slot.PAD, BOS: Slot.BOS, EOS: Slot.EOS, STOP: Slot.STOP, COMP: Slot.COMP,
             END_COMP: Slot.END_COMP}
    if token in fixed:
        return fixed[token]
    if token.startswith("SG"):
        return Slot.SPACE_GROUP
    if token.startswith("W_"):
        return Slot.WYCKOFF
    if token in AXIS_TOKENS:
        return Slot.COORD
    if token.startswith("L_"):
        return Slot.LATTICE
    if token.startswith("N") and token[1:].isdigit():
        return Slot.COMP_COUNT
    return Slot.ELEMENT


def _check_vocabulary(vocab: list[str]) -> None:
    if len(set(vocab)) != len(vocab):
        raise ValueError("tokenizer vocabulary has duplicate tokens")
    expected = set(build_vocabulary(1)) - {count_token(1)}
    missing = expected - set(vocab)
    if missing:
        raise ValueError(f"tokenizer vocabulary is missing {len(missing)} required tokens, e.g. {sorted(missing)[:5]}")
    for tok in vocab:
        if _slot_of_token(tok) == Slot.ELEMENT:
            atomic_number(tok)  # raises for unknown symbols
    counts = sorted(int(t[1:]) for t in vocab if _slot_of_token(t) == Slot.COMP_COUNT)
    if counts != list(range(1, len(counts) + 1)):  # max_count and the grammar assume N1..N<max_count>
        raise ValueError(f"tokenizer count tokens must be N1..N{len(counts)} without gaps, got "
                         f"{[count_token(n) for n in counts[:3]]} .. {count_token(counts[-1])}")


def _first_mismatch(ids: list[int]) -> int:
    return next(i for i, v in enumerate(ids) if v != i)
