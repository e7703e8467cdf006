"""The grammar of the token language: which next tokens are legal given a prefix.

This is the single place that states the rules; the tokenizer's encodings obey them and the
sampler masks logits with exactly these boolean masks (never by adding -1e10 to logits).

Rules (DESIGN section 4):

- ``[BOS]`` first; then an optional composition prompt ``[COMP] El N<n> ... [/COMP]`` whose
  elements strictly increase in atomic number; then one space-group token.
- Sites: a Wyckoff letter of that space group, an element, then the forced axis tokens of the
  position's free parameters. Letters are non-decreasing; strictly increasing after a position
  with no free parameter (such a position holds one orbit only). At most ``n_max`` sites.
- ``[STOP]`` only after at least one site; then the forced lattice tokens of the crystal
  system, then ``[EOS]``; only ``[PAD]`` after ``[EOS]``.
- With a composition prompt (counts per conventional cell), a space group, letter or element is
  legal only if the remaining counts can still be completed exactly: a subset-sum check over
  the space group's multiplicities in which every position without free parameters is used at
  most once, positions with free parameters any number of times, and the number of sites
  stays within ``n_max`` (:func:`min_sites`). ``[STOP]`` is legal only when every count is used.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, replace

import numpy as np

from .elements import atomic_number
from .symmetry import free_lattice_names, space_group
from .tokenizer import (
    AXIS_TOKENS,
    BOS,
    COMP,
    END_COMP,
    EOS,
    PAD,
    STOP,
    CrystalTokenizer,
    Slot,
    count_token,
    lattice_token,
    sg_token,
    wyckoff_token,
)

DEFAULT_N_MAX = 64  # symmetry-distinct sites; MP-20 needs ~21 in conventional cells, MPTS-52 more

INF = 10**9
MASK_CACHE_SIZE = 100_000  # cached masks per Grammar (632 bytes each: ~63 MB at most)


class Phase(enum.IntEnum):
    BEGIN = 0  # expects [BOS]
    AFTER_BOS = 1  # [COMP] or a space group
    COMP_ELEMENT = 2  # a prompt element, or [/COMP] after at least one
    COMP_COUNT = 3
    SPACE_GROUP = 4
    SITE = 5  # a Wyckoff letter or [STOP]
    ELEMENT = 6  # the element of the site whose letter was just chosen
    FORCED = 7  # axis tokens of the site / lattice tokens: exactly one legal token
    EOS = 8
    DONE = 9  # after [EOS]: padding only


@dataclass(frozen=True)
class GrammarState:
    """Where a prefix stands; advance with :meth:`Grammar.step`."""

    phase: Phase = Phase.BEGIN
    prompt: tuple[tuple[int, int], ...] | None = None  # (element id, count) of the prompt, when given
    remaining: tuple[tuple[int, int], ...] | None = None  # (element id, count) still to place
    sg: int | None = None
    n_sites: int = 0
    start: int = 0  # index of the first Wyckoff position still usable (non-decreasing letters)
    wyckoff: int | None = None  # index of the position whose element comes next
    pending: tuple[int, ...] = ()  # forced token ids still to come
    lattice_done: bool = False
    atoms: int = 0  # atoms placed so far (sum of the chosen positions' multiplicities)

    @property
    def has_prompt(self) -> bool:
        return self.prompt is not None


class IllegalTokenError(ValueError):
    """A token the grammar does not allow at this point."""


class Grammar:
    """Legal-next-token masks over a :class:`CrystalTokenizer` vocabulary."""

    def __init__(self, tokenizer: CrystalTokenizer, n_max: int = DEFAULT_N_MAX, composition: bool = True):
        """``composition=False``: a prompt is parsed (it stays context) but its counts are not enforced."""
        if n_max < 1:
            raise ValueError(f"n_max must be >= 1, got {n_max}")
        self.tokenizer = tokenizer
        self.n_max = n_max
        self.composition = composition
        tid = tokenizer.id
        self.V = tokenizer.vocab_size
        self.pad, self.bos, self.eos, self.stop = tid(PAD), tid(BOS), tid(EOS), tid(STOP)
        self.comp, self.end_comp = tid(COMP), tid(END_COMP)
        self.sg_ids = np.array([tid(sg_token(n)) for n in range(1, 231)])
        slots = np.array([tokenizer.token_slot(i) for i in range(self.V)])
        self.element_ids = np.flatnonzero(slots == Slot.ELEMENT)
        self.count_ids = np.array([tid(count_token(n)) for n in range(1, tokenizer.max_count + 1)])
        self.count_of_id = {int(i): n + 1 for n, i in enumerate(self.count_ids)}
        self.axis_ids = [tid(t) for t in AXIS_TOKENS]
        self._sg_of_id = {int(i): n + 1 for n, i in enumerate(self.sg_ids)}
        # atomic numbers from the symbols, not from vocabulary order: a loaded vocabulary may list elements in any order
        self._z_of_element = np.array([atomic_number(tokenizer.vocab[i]) for i in self.element_ids])
        self._element_z = dict(zip(self.element_ids.tolist(), self._z_of_element.tolist()))
        self._cache: dict[GrammarState, np.ndarray] = {}

    # ------------------------------------------------------------------ public API
    def start(self) -> GrammarState:
        return GrammarState()

    def allowed(self, state: GrammarState) -> np.ndarray:
        """Boolean mask (V,) of the legal next tokens (read-only: cached per state)."""
        mask = self._cache.get(state)
        if mask is None:
            if len(self._cache) >= MASK_CACHE_SIZE:  # states with composition prompts are many; bound the memory
                self._cache.clear()
            mask = self._cache[state] = self._allowed(state)
            mask.flags.writeable = False
        return mask

    def _allowed(self, state: GrammarState) -> np.ndarray:
        mask = np.zeros(self.V, dtype=bool)
        ph = state.phase
        if ph == Phase.BEGIN:
            mask[self.bos] = True
        elif ph == Phase.AFTER_BOS:
            mask[self.comp] = True
            mask[self.sg_ids] = True
        elif ph == Phase.COMP_ELEMENT:
            last_z = self._element_z[state.prompt[-1][0]] if state.prompt else 0
            mask[self.element_ids[self._z_of_element > last_z]] = True  # strictly increasing atomic number
            mask[self.end_comp] = bool(state.prompt)
        elif ph == Phase.COMP_COUNT:
            mask[self.count_ids] = True
        elif ph == Phase.SPACE_GROUP:
            mask[self.sg_ids[self._feasible_space_groups(state.remaining)]] = True
        elif ph == Phase.SITE:
            self._site_mask(state, mask)
        elif ph == Phase.ELEMENT:
            self._element_mask(state, mask)
        elif ph == Phase.FORCED:
            mask[state.pending[0]] = True
        elif ph == Phase.EOS:
            mask[self.eos] = True
        else:
            mask[self.pad] = True
        return mask

    def step(self, state: GrammarState, token_id: int) -> GrammarState:
        """The state after ``token_id``; raises IllegalTokenError if it is not allowed."""
        t = int(token_id)
        if not 0 <= t < self.V or not self.allowed(state)[t]:
            word = self.tokenizer.vocab[t] if 0 <= t < self.V else t
            raise IllegalTokenError(f"token {word!r} is not legal in phase {state.phase.name}")
        ph = state.phase
        if ph == Phase.BEGIN:
            return replace(state, phase=Phase.AFTER_BOS)
        if ph == Phase.AFTER_BOS:
            if t == self.comp:
                return replace(state, phase=Phase.COMP_ELEMENT, prompt=())
            return self._enter_space_group(state, t)
        if ph == Phase.COMP_ELEMENT:
            if t == self.end_comp:
                return replace(state, phase=Phase.SPACE_GROUP, remaining=state.prompt if self.composition else None)
            return replace(state, phase=Phase.COMP_COUNT, prompt=state.prompt + ((t, 0),))
        if ph == Phase.COMP_COUNT:
            el = state.prompt[-1][0]
            return replace(state, phase=Phase.COMP_ELEMENT, prompt=state.prompt[:-1] + ((el, self.count_of_id[t]),))
        if ph == Phase.SPACE_GROUP:
            return self._enter_space_group(state, t)
        if ph == Phase.SITE:
            if t == self.stop:
                names = free_lattice_names(space_group(state.sg).crystal_system)
                pending = tuple(self.tokenizer.id(lattice_token(n)) for n in names)
                return replace(state, phase=Phase.FORCED, pending=pending, lattice_done=True)
            idx = self._wyckoff_index(state.sg, t)
            return replace(state, phase=Phase.ELEMENT, wyckoff=idx)
        if ph == Phase.ELEMENT:
            wp = space_group(state.sg).wyckoff[state.wyckoff]
            remaining = state.remaining
            if remaining is not None:
                remaining = _subtract(remaining, t, wp.multiplicity)
            pending = tuple(self.axis_ids[a] for a in wp.free_axes)
            new = replace(state, remaining=remaining, n_sites=state.n_sites + 1, wyckoff=None,
                          start=wp.index + (1 if wp.dof == 0 else 0), pending=pending,
                          atoms=state.atoms + wp.multiplicity)
            return replace(new, phase=Phase.FORCED) if pending else replace(new, phase=Phase.SITE)
        if ph == Phase.FORCED:
            rest = state.pending[1:]
            if rest:
                return replace(state, pending=rest)
            return replace(state, pending=(), phase=Phase.EOS if state.lattice_done else Phase.SITE)
        if ph == Phase.EOS:
            return replace(state, phase=Phase.DONE)
        return state  # padding after [EOS]

    def walk(self, ids) -> list[GrammarState]:
        """States before each token of ``ids`` and after the last (len(ids) + 1 states)."""
        states = [self.start()]
        for pos, t in enumerate(np.asarray(ids).reshape(-1)):
            try:
                states.append(self.step(states[-1], int(t)))
            except IllegalTokenError as err:  # ids outside the vocabulary are shown as numbers
                words = " ".join(self.tokenizer.vocab[i] if 0 <= i < self.V else str(i)
                                 for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist())
                raise IllegalTokenError(f"position {pos}: {err} in {words!r}") from None
        return states

    def check(self, ids) -> None:
        """Raise IllegalTokenError naming the first illegal position; ``ids`` must end with [EOS] (+ padding)."""
        final = self.walk(ids)[-1]
        if final.phase != Phase.DONE:
            raise IllegalTokenError(f"token stream ends in phase {final.phase.name}, before [EOS]")

    def is_legal(self, ids) -> bool:
        try:
            self.check(ids)
        except IllegalTokenError:
            return False
        return True

    def structural(self, state: GrammarState) -> np.ndarray:
        """Like :meth:`allowed` but ignoring the composition prompt's counts (the prompt stays context).

        These are the model's own masks: p(X | prompt) is normalized over structurally legal tokens,
        and conditioning on the exact composition is left to the sampler (masking + importance
        weights), so that the weights measure how much mass the model puts on feasible tokens.
        """
        return self.allowed(replace(state, remaining=None) if state.remaining is not None else state)

    def masks(self, ids, composition: bool = True) -> np.ndarray:
        """(T, V) mask of the legal tokens at each position of a legal stream (teacher forcing).

        ``composition=False`` gives the :meth:`structural` masks.
        """
        states = self.walk(ids)[:-1]
        allowed = self.allowed if composition else self.structural
        return np.stack([allowed(s) for s in states])

    # ------------------------------------------------------------------ helpers
    def _enter_space_group(self, state: GrammarState, t: int) -> GrammarState:
        return replace(state, phase=Phase.SITE, sg=self._sg_of_id[t])

    def _wyckoff_index(self, sg: int, t: int) -> int:
        word = self.tokenizer.vocab[t]
        return space_group(sg).position(word[2:]).index

    def _feasible_space_groups(self, remaining) -> np.ndarray:
        if remaining is None:
            return np.arange(230)
        counts = _counts(remaining)
        return np.array([n - 1 for n in range(1, 231) if min_sites(n, 0, counts) <= self.n_max], dtype=int)

    def _site_mask(self, state: GrammarState, mask: np.ndarray) -> None:
        done = state.remaining is None or not state.remaining
        mask[self.stop] = state.n_sites >= 1 and done
        if state.n_sites >= self.n_max or (state.remaining is not None and done):
            return
        sg = space_group(state.sg)
        budget = self.n_max - state.n_sites - 1
        for wp in sg.wyckoff[state.start:]:
            if state.remaining is None or any(
                    self._element_fits(state, wp, el, budget) for el, _ in state.remaining):
                mask[self.tokenizer.id(wyckoff_token(wp.letter))] = True

    def _element_mask(self, state: GrammarState, mask: np.ndarray) -> None:
        wp = space_group(state.sg).wyckoff[state.wyckoff]
        if state.remaining is None:
            mask[self.element_ids] = True
            return
        budget = self.n_max - state.n_sites - 1
        for el, _ in state.remaining:
            mask[el] = self._element_fits(state, wp, el, budget)

    def _element_fits(self, state: GrammarState, wp, el: int, budget: int) -> bool:
        have = dict(state.remaining).get(el, 0)
        if have < wp.multiplicity:
            return False
        rest = _counts(_subtract(state.remaining, el, wp.multiplicity))
        start = wp.index + (1 if wp.dof == 0 else 0)
        return min_sites(state.sg, start, rest) <= budget


def _subtract(remaining, el: int, n: int):
    out = []
    for e, c in remaining:
        c = c - n if e == el else c
        if c < 0:
            raise IllegalTokenError(f"element id {el} would exceed its count in the prompt")
        if c > 0:
            out.append((e, c))
    return tuple(out)


def _counts(remaining) -> tuple[int, ...]:
    return tuple(sorted(c for _, c in remaining))


@functools.lru_cache(maxsize=None)
def _position_sets(sg: int, start: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Multiplicities of the usable positions from ``start`` on: (without, with) free parameters."""
    wps = space_group(sg).wyckoff[start:]
    return tuple(w.multiplicity for w in wps if w.dof == 0), tuple(sorted({w.multiplicity for w in wps if w.dof > 0}))


@functools.lru_cache(maxsize=None)
def _min_coins(coins: tuple[int, ...], upto: int) -> tuple[int, ...]:
    """Fewest orbits of positions with free parameters summing to each count 0..upto (INF if none)."""
    best = [0] + [INF] * upto
    for v in range(1, upto + 1):
        for c in coins:
            if c <= v and best[v - c] + 1 < best[v]:
                best[v] = best[v - c] + 1
    return tuple(best)


@functools.lru_cache(maxsize=200_000)
def min_sites(sg: int, start: int, counts: tuple[int, ...]) -> int:
    """Fewest sites that realize ``counts`` (one count per element) in space group ``sg``.

    Only Wyckoff positions with index >= ``start`` may be used; each position without free
    parameters at most once in total, the others any number of times. Returns INF when the
    counts cannot be realized. Dynamic programme over elements with the set of used fixed
    positions as a bit mask; per element, every subset of the still-free fixed positions
    (enumerated as sub-masks) plus the fewest free-parameter orbits for the rest.
    """
    counts = tuple(c for c in counts if c > 0)
    if not counts:
        return 0
    fixed, coins = _position_sets(sg, start)
    coin_table = _min_coins(coins, max(counts))
    full = (1 << len(fixed)) - 1
    subset_sum = [0] * (full + 1)
    subset_size = [0] * (full + 1)
    for s in range(1, full + 1):
        low = (s & -s).bit_length() - 1
        subset_sum[s] = subset_sum[s & (s - 1)] + fixed[low]
        subset_size[s] = subset_size[s & (s - 1)] + 1
    best = {0: 0}  # used mask -> fewest sites so far
    for c in counts:
        nxt: dict[int, int] = {}
        for used, sites in best.items():
            free = full & ~used
            sub = free
            while True:  # every sub-mask of ``free``, including 0
                m = subset_sum[sub]
                if m <= c and coin_table[c - m] < INF:
                    key = used | sub
                    total = sites + subset_size[sub] + coin_table[c - m]
                    if total < nxt.get(key, INF):
                        nxt[key] = total
                if sub == 0:
                    break
                sub = (sub - 1) & free
        if not nxt:
            return INF
        best = nxt
    return min(best.values())
