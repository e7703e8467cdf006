"""Batched autoregressive decoding with the KV cache, grammar masks and sequential Monte Carlo.

Every step emits one token per sequence (forced tokens included), so all sequences share the
cache length while each sits at its own slot type: a discrete choice (space group, Wyckoff
letter or [STOP], element), a forced axis / lattice token whose continuous value is drawn
from the von Mises / Gaussian mixture head, or padding after [EOS].

Constraints (composition, space-group sets, element allow-lists) narrow the masks. Plain
masking samples from the greedy truncation of the model: at each step it renormalizes over
the allowed tokens, which over-weights prefixes whose continuations are mostly forbidden. The
target is the model conditioned on the constraint, pi(X) ∝ q(X) 1[X satisfies it]. With
the masked proposal r(x_t | x_<t) = q(x_t | x_<t) / Z_t on the allowed set A_t, where
Z_t = sum_{a in A_t} q(a | x_<t), the importance weight is pi / r ∝ prod_t Z_t: each particle
carries the log of the mass its masks removed, and particles are resampled (systematic
resampling) whenever the effective sample size falls below ``ess_threshold`` * N
(sequential Monte Carlo; Del Moral, Doucet & Jasra 2006). With temperature or top-p the
tempered model plays the role of q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..grammar import GrammarState, Phase
from ..model.distributions import angle_in_component, nucleus
from ..model.transformer import KVCache
from ..tokenizer import Slot
from .constraints import ConstraintMasks


@dataclass(frozen=True)
class DecodeOptions:
    temperature: float = 1.0
    top_p: float = 1.0
    smc: bool = True
    """Carry importance weights for the mass constraint masks remove and resample (exact conditioning)."""
    ess_threshold: float = 0.5
    kv_cache: bool = True
    """Incremental decoding; False recomputes the whole prefix at every step (for benchmarks and checks)."""
    von_mises_rounds: int | None = None
    """Coordinates: draw this many rejection proposals at once (no host sync; rare misses drawn again);
    0: the sequential rejection loop; None: 16 on CUDA, the loop elsewhere (where syncs cost nothing)."""

    def __post_init__(self):
        finite = all(math.isfinite(float(v)) for v in (self.temperature, self.top_p, self.ess_threshold))
        if self.von_mises_rounds is not None and not (isinstance(self.von_mises_rounds, int)
                                                      and 0 <= self.von_mises_rounds <= 1024):
            raise ValueError(f"von_mises_rounds must be None or an integer 0..1024, got {self.von_mises_rounds!r}")
        if not finite or self.temperature <= 0 or not 0 < self.top_p <= 1 or not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"need temperature > 0, 0 < top_p <= 1 and 0 <= ess_threshold <= 1; got "
                             f"{self.temperature}, {self.top_p}, {self.ess_threshold}")


@dataclass
class Decoded:
    """Token streams of N particles with their model log-likelihood and final log-weight."""

    ids: list[list[int]]
    values: list[list[float]]
    log_likelihood: np.ndarray  # (N,) log q(X [| prompt]) at temperature 1, structural masks
    log_weight: np.ndarray  # (N,) SMC log-weight (-inf: the particle hit a dead end)
    log_evidence: float  # log of the estimated mass of q on constraint-satisfying streams
    resamples: int
    ancestors: np.ndarray  # (N,) original particle of each returned one (for branch bookkeeping)
    log_p: list[np.ndarray] | None = None  # with records: per position, log q term (0 on the prompt, forced tokens)
    log_z: list[np.ndarray] | None = None  # with records: per position, log Z_t kept by the masks (-inf: outside)


def systematic_resample(log_w: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """n indices drawn by systematic resampling from normalized weights exp(log_w)."""
    w = np.exp(log_w - np.max(log_w))
    w /= w.sum()
    u = (float(torch.rand((), generator=generator, dtype=torch.float64, device=generator.device)) + np.arange(n)) / n
    return np.minimum(np.searchsorted(np.cumsum(w), u, side="right"), len(w) - 1)


CHOICE_PHASES = frozenset((Phase.AFTER_BOS, Phase.SPACE_GROUP, Phase.SITE, Phase.ELEMENT))
COMPACT_FRACTION = 0.75  # finished rows leave the batch once at most this fraction of its rows is live


class MaskTable:
    """Boolean masks (V,) as rows of one device tensor, one row per distinct key.

    Masks depend on a grammar state (and the constraint), and a batch of particles shares few
    distinct states, so each step looks rows up by index (one small upload of new rows, no
    N x V tensor built on the host per step). ``live[r]`` says whether row r allows any token.
    """

    def __init__(self, V: int, device: torch.device, capacity: int = 256):
        self.index: dict = {}
        self.table = torch.zeros((capacity, V), dtype=torch.bool, device=device)  # (capacity, V)
        self.live: list[bool] = []

    def rows(self, keys: list, make) -> np.ndarray:
        """Row of each key; ``make(key)`` builds the (V,) mask of a key not seen before."""
        out = np.empty(len(keys), dtype=np.int64)
        new = []
        for k, key in enumerate(keys):
            r = self.index.get(key)
            if r is None:
                r = self.index[key] = len(self.live) + len(new)
                new.append(make(key))
            out[k] = r
        if new:
            n, rows = len(self.live), np.stack(new)  # (m, V)
            if n + len(new) > self.table.shape[0]:
                grown = self.table.new_zeros((max(2 * self.table.shape[0], n + len(new)), self.table.shape[1]))
                grown[:n] = self.table[:n]
                self.table = grown
            self.table[n:n + len(new)] = torch.from_numpy(rows).to(self.table.device)
            self.live += rows.any(1).tolist()
        return out


@torch.no_grad()
def decode(model, prefixes: list[list[int]], masks: ConstraintMasks | list[ConstraintMasks], options: DecodeOptions, generator: torch.Generator, *,
           grammar=None, forced: list[tuple[list[int], list[float]]] | None = None, records: bool = False,
           raise_if_dead: bool = True) -> Decoded:
    """Complete every prefix (e.g. ``[BOS]`` or ``[BOS] [COMP] ... [/COMP]``) to a stream ending in [EOS].

    The one decoding kernel behind sampling, CSP, infill and design.

    - ``prefixes``: prompts of one length, read in one forward pass and not scored.
    - ``masks``: one :class:`ConstraintMasks` for all particles or one per particle.
    - ``grammar``: the proposal grammar (legal tokens with composition counts); default the
      model's grammar with an ``n_max`` that fits ``max_len`` after the prompt (:func:`fitting_grammar`).
      ``log q`` always uses the model's structural masks.
    - ``forced``: per particle, tokens and values that follow the prompt and are teacher-forced
      (scored, not drawn); decoding draws the rest. Needs ``smc=False`` at temperature 1.
    - ``records``: also return per-position ``log_p`` and ``log_z`` (see :class:`Decoded`).
    - ``raise_if_dead``: a ValueError when every particle hit a dead end; False returns them
      with -inf weights (design counts such proposals as rejected).

    Finished particles leave the batch (their cache rows are dropped once enough have
    finished); logits are computed once per step; masks are device rows looked up by index;
    the step's tokens, values and log terms come back to the host in one transfer.
    """
    structural_grammar, tok = model.grammar, model.tokenizer
    N, device = len(prefixes), model.device
    if N == 0:
        raise ValueError("decode needs at least one prefix")
    P = len(prefixes[0])
    if any(len(p) != P for p in prefixes):
        raise ValueError("all prefixes of one decoding batch must have the same length")
    if forced is not None:
        if len(forced) != N:
            raise ValueError(f"forced holds {len(forced)} streams for {N} prefixes")
        if options.smc or options.temperature != 1.0 or options.top_p != 1.0:
            raise ValueError("teacher-forced decoding scores the model itself: needs smc=False, temperature 1, top_p 1")
    grammar = fitting_grammar(model, P) if grammar is None else grammar
    if not isinstance(masks, (list, tuple)):
        masks = [masks] * N
    if len(masks) != N:
        raise ValueError(f"{len(masks)} masks for {N} prefixes")
    unique: dict[int, int] = {}
    mask_of = np.array([unique.setdefault(id(m), len(unique)) for m in masks])  # (N,) index of each particle's masks
    constraint = {unique[id(m)]: m for m in masks}
    structural_table = MaskTable(tok.vocab_size, device)
    allowed_table = MaskTable(tok.vocab_size, device)
    comp = model.comp_id

    def structural_row(state):
        row = structural_grammar.structural(state).copy()
        row[comp] = False  # the prompt is given, never sampled
        return row

    def allowed_row(key):
        m, state = key
        row = np.array(constraint[m].apply(grammar.allowed(state), state), dtype=bool)
        row[comp] = False
        return row

    states = [grammar.walk(p)[-1] for p in prefixes]
    ids = [list(p) for p in prefixes]
    values = [[0.0] * P for _ in prefixes]
    rec_p = [[0.0] * P for _ in prefixes] if records else None
    rec_z = [[0.0] * P for _ in prefixes] if records else None
    log_lik, log_w = np.zeros(N), np.zeros(N)
    log_evidence, resamples, ancestors = 0.0, 0, np.arange(N)
    slot_of = model.tables.slot.cpu().numpy()
    pad = structural_grammar.pad
    prefix = torch.tensor(prefixes, dtype=torch.long, device=device)  # (N, P)
    slots = torch.tensor([[_prefix_slot(tok, structural_grammar, p, i) for i in range(P)] for p in prefixes],
                         dtype=torch.long, device=device)  # (N, P)
    forward = _Forward(model, N, options.kv_cache)
    h_last = forward(prefix, torch.zeros(prefix.shape, device=device), slots)  # (N, C)
    row_particle = np.arange(N)  # (B,) particle held by each batch row, -1 once finished
    for i in range(N):
        if states[i].phase == Phase.DONE:
            row_particle[i] = -1
    while (row_particle >= 0).any():
        if forward.length >= model.config.max_len:
            raise RuntimeError(f"decoding reached max_len={model.config.max_len} before [EOS]")
        live = np.flatnonzero(row_particle >= 0)  # batch rows still decoding
        parts = row_particle[live]
        step = _step(model, h_last, live, [states[p] for p in parts], mask_of[parts], options, generator,
                     structural_table, allowed_table, structural_row, allowed_row, slot_of,
                     None if forced is None else [forced[p] for p in parts], forward.length - P)
        tokens, vals, ll, lz, teacher, tokens_dev, vals_dev = step
        for k, p in enumerate(parts):
            t = int(tokens[k])
            ids[p].append(t)
            values[p].append(float(vals[k]))
            if records:
                rec_p[p].append(float(ll[k]))
                rec_z[p].append(float(lz[k]))
            states[p] = (structural_grammar if teacher[k] else grammar).step(states[p], t)
        log_lik[parts] += ll
        log_w[parts] += lz if options.smc else np.where(np.isfinite(lz), 0.0, -np.inf)
        finished = np.array([states[p].phase == Phase.DONE for p in parts])
        row_particle[live[finished]] = -1
        # the batch rows that decode the next token, in order
        select = None
        if options.smc and _ess(log_w) < options.ess_threshold * N and np.isfinite(log_w).any():
            idx = systematic_resample(log_w, N, generator)
            log_evidence += _log_mean_exp(log_w)
            log_w = np.zeros(N)
            resamples += 1
            row_of = np.full(N, -1)
            row_of[row_particle[row_particle >= 0]] = np.flatnonzero(row_particle >= 0)
            states, mask_of = [states[i] for i in idx], mask_of[idx]
            ids, values = [list(ids[i]) for i in idx], [list(values[i]) for i in idx]
            if records:
                rec_p, rec_z = [list(rec_p[i]) for i in idx], [list(rec_z[i]) for i in idx]
            if forced is not None:
                forced = [forced[i] for i in idx]
            log_lik, ancestors = log_lik[idx], ancestors[idx]
            going = np.flatnonzero(row_of[idx] >= 0)  # new particles still decoding
            select, row_particle = row_of[idx][going], going
        elif 0 < (row_particle >= 0).sum() <= COMPACT_FRACTION * len(row_particle):
            select = np.flatnonzero(row_particle >= 0)
            row_particle = row_particle[select]
        if not (row_particle >= 0).any():
            break
        # next input: this step's token of every batch row ([PAD] on finished rows), then the selection
        full_t = torch.full((forward.rows,), pad, dtype=torch.long, device=device)  # (B,)
        full_v = torch.zeros((forward.rows,), dtype=torch.float32, device=device)  # (B,)
        live_t = torch.as_tensor(live, device=device)
        full_t[live_t] = tokens_dev
        full_v[live_t] = vals_dev
        if select is not None:
            sel = torch.as_tensor(select, device=device)
            forward.select(sel)
            full_t, full_v = full_t[sel], full_v[sel]
        h_last = forward(full_t[:, None], full_v[:, None], model.tables.slot[full_t][:, None])
    if raise_if_dead and not np.isfinite(log_w).any():
        raise ValueError("no particle satisfies the constraints (every one reached a dead end): the allow-lists "
                         "and the composition / space groups exclude each other")
    if options.smc:
        log_evidence += _log_mean_exp(log_w)
    return Decoded(ids, values, log_lik, log_w, log_evidence, resamples, ancestors,
                   None if rec_p is None else [np.asarray(a) for a in rec_p],
                   None if rec_z is None else [np.asarray(a) for a in rec_z])


class _Forward:
    """Hidden state after the newest position: incremental with the KV cache, or the whole stream recomputed.

    On a GPU the network runs under bf16 autocast, as in training; the heads work in float32.
    """

    def __init__(self, model, batch: int, kv_cache: bool):
        self.model = model
        self.rows = batch
        self.cache = KVCache.empty(model.config, batch, device=model.device) if kv_cache else None
        self.sg = torch.zeros(batch, dtype=torch.long, device=model.device)  # (N,)
        self.seen: list[torch.Tensor] | None = None if kv_cache else []  # ids, values, slots so far
        self.length = 0

    def __call__(self, ids: torch.Tensor, values: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        cuda = self.model.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if self.cache is not None:
                h, sgs = self.model.hidden(ids, values, slots, cache=self.cache, sg_prev=self.sg)  # (N, T, C)
                self.sg = sgs[:, -1]
            else:
                new = (ids, values, slots)
                self.seen = list(new) if not self.seen else [torch.cat([a, b], 1) for a, b in zip(self.seen, new)]
                h, _ = self.model.hidden(*self.seen)  # (N, t, C)
        self.length += ids.shape[1]
        return h[:, -1].float()  # (N, C)

    def select(self, index: torch.Tensor) -> None:
        self.rows = len(index)
        if self.cache is not None:
            self.cache = self.cache.select(index)
            self.sg = self.sg[index]
        else:
            self.seen = [x[index] for x in self.seen]


def fitting_grammar(model, prefix_len: int):
    """The model's grammar with n_max lowered so that every stream fits max_len after a prefix.

    A site costs at most 5 tokens (letter, element, three coordinates); after the sites come
    [STOP], at most six lattice tokens and [EOS], and before them the space group.
    """
    from ..grammar import Grammar

    fit = (model.config.max_len - prefix_len - 9) // 5
    if fit >= model.grammar.n_max:
        return model.grammar
    if fit < 1:
        raise ValueError(f"a prompt of {prefix_len} tokens leaves no room in max_len={model.config.max_len}")
    cache = model.__dict__.setdefault("_fitting_grammars", {})
    if fit not in cache:
        cache[fit] = Grammar(model.tokenizer, n_max=fit)
    return cache[fit]


def _forced_token(state: GrammarState, eos: int) -> int:
    """The one legal token of a state without a choice (an axis or lattice token, or [EOS])."""
    return int(state.pending[0]) if state.phase == Phase.FORCED else eos


def _step(model, h_last: torch.Tensor, live: np.ndarray, states: list[GrammarState], mask_index: np.ndarray,
          options: DecodeOptions, generator: torch.Generator, structural_table: MaskTable, allowed_table: MaskTable,
          structural_row, allowed_row, slot_of: np.ndarray, forced, offset: int):
    """Next token, value, log q (T = 1) and log Z_t of the live rows ``live`` of the batch.

    Returns host arrays (tokens, values, log q, log Z; -inf where the particle hit a dead end or a
    teacher-forced token lies outside its constraint; which tokens were teacher-forced) and the
    device tokens and values (n,).
    """
    device, n = h_last.device, len(states)
    eos = model.grammar.eos
    teacher = np.zeros(n, dtype=bool)
    t_ids, t_vals = np.zeros(n, dtype=np.int64), np.zeros(n)
    if forced is not None:
        for k, (f_ids, f_vals) in enumerate(forced):
            if offset < len(f_ids):
                teacher[k], t_ids[k], t_vals[k] = True, f_ids[offset], f_vals[offset]
    choice = np.array([s.phase in CHOICE_PHASES for s in states])
    host_tokens = np.array([0 if c else _forced_token(s, eos) for s, c in zip(states, choice)], dtype=np.int64)
    host_tokens[teacher & ~choice] = t_ids[teacher & ~choice]
    tokens = torch.as_tensor(host_tokens, device=device)  # (n,)
    vals = torch.zeros(n, dtype=torch.float32, device=device)  # (n,)
    ll = torch.zeros(n, dtype=torch.float64, device=device)  # (n,)
    lz = torch.zeros(n, dtype=torch.float64, device=device)  # (n,)
    rows = np.flatnonzero(choice)
    if rows.size:
        chosen_states = [states[k] for k in rows]
        s_idx = structural_table.rows(chosen_states, structural_row)
        a_idx = allowed_table.rows(list(zip(mask_index[rows].tolist(), chosen_states)), allowed_row)
        dead = ~np.array([allowed_table.live[a] for a in a_idx])
        r = torch.as_tensor(live[rows], device=device)
        logits = model.token_head(h_last[r]).float()  # (m, V)
        struct = structural_table.table[torch.as_tensor(s_idx, device=device)]  # (m, V)
        allow = allowed_table.table[torch.as_tensor(a_idx, device=device)]  # (m, V)
        dead_t = torch.as_tensor(dead, device=device)
        allow = torch.where(dead_t[:, None], struct, allow)  # a dead particle decodes on; its weight is zero
        log_q = torch.log_softmax(logits.masked_fill(~struct, float("-inf")), -1)  # (m, V) at T = 1
        log_q_t = log_q if options.temperature == 1.0 else \
            torch.log_softmax((logits / options.temperature).masked_fill(~struct, float("-inf")), -1)
        masked = log_q_t.masked_fill(~allow, float("-inf"))  # (m, V)
        kept = torch.logsumexp(masked, -1)  # (m,) log Z_t
        probs = torch.softmax(masked, -1)
        if options.top_p < 1.0:
            probs = nucleus(probs, options.top_p)
        chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (m,)
        forced_rows = teacher[rows]
        if forced_rows.any():
            chosen = torch.where(torch.as_tensor(forced_rows, device=device),
                                 torch.as_tensor(t_ids[rows], device=device), chosen)
        inside = allow.gather(-1, chosen[:, None]).squeeze(-1) & ~dead_t  # (m,)
        tokens[r.new_tensor(rows)] = chosen
        ll[r.new_tensor(rows)] = log_q.gather(-1, chosen[:, None]).squeeze(-1).double()
        lz[r.new_tensor(rows)] = torch.where(inside, kept, torch.full_like(kept, float("-inf"))).double()
    rounds = options.von_mises_rounds
    rounds = (16 if device.type == "cuda" else 0) if rounds is None else rounds
    ok = torch.ones(n, dtype=torch.float64, device=device)  # (n,) 0 where a coordinate must be drawn again
    redo = None
    for slot, make in ((Slot.COORD, model.coord_distribution), (Slot.LATTICE, model.lattice_distribution)):
        rows = np.flatnonzero(~choice & (slot_of[host_tokens] == slot))
        if rows.size:
            k = torch.as_tensor(rows, device=device)
            dist = make(h_last[torch.as_tensor(live[rows], device=device)], tokens[k])
            forced_x = torch.as_tensor(t_vals[rows], dtype=torch.float32, device=device)
            if teacher[rows].all():
                x = forced_x
            else:
                if slot == Slot.COORD and rounds > 0:
                    x, drawn, component = dist.sample(generator, rounds=rounds)
                    ok[k] = (drawn | torch.as_tensor(teacher[rows], device=device)).double()
                    redo = (rows, k, dist, component)
                else:
                    x = dist.sample(generator).float()
                if teacher[rows].any():
                    x = torch.where(torch.as_tensor(teacher[rows], device=device), forced_x, x)
            vals[k] = x
            ll[k] = dist.log_prob(x).double()
    packed = torch.stack([tokens.double(), vals.double(), ll, lz, ok]).cpu().numpy()  # the step's one transfer
    host_vals, host_ll = packed[1], packed[2]
    if redo is not None and (packed[4] == 0).any():  # rare: every proposal rejected; draw those again
        rows, k, dist, (loc, kappa) = redo
        again = torch.as_tensor(np.flatnonzero(packed[4][rows] == 0), device=device)  # never a teacher row
        x = vals[k].clone()
        x[again] = angle_in_component(loc[again], kappa[again], generator)  # the same components
        vals[k] = x
        fixed_ll = dist.log_prob(x).double()
        host_vals[rows], host_ll[rows] = x.double().cpu().numpy(), fixed_ll.cpu().numpy()
    return packed[0].astype(np.int64), host_vals, host_ll, packed[3], teacher, tokens, vals


def _prefix_slot(tok, grammar, prefix: list[int], i: int) -> int:
    """Slot of position i of a prompt prefix: [BOS] [COMP] (El N)* [/COMP]."""
    t = prefix[i]
    if t == grammar.bos:
        return int(Slot.BOS)
    if t == grammar.comp:
        return int(Slot.COMP)
    if t == grammar.end_comp:
        return int(Slot.END_COMP)
    return int(Slot.COMP_COUNT if t in grammar.count_of_id else Slot.COMP_ELEMENT)


def _ess(log_w: np.ndarray) -> float:
    if not np.isfinite(log_w).any():
        return 0.0
    w = np.exp(log_w - np.max(log_w))
    return float(w.sum() ** 2 / (w * w).sum())


def _log_mean_exp(log_w: np.ndarray) -> float:
    m = np.max(log_w)
    if not np.isfinite(m):
        return -math.inf
    return float(m + np.log(np.mean(np.exp(log_w - m))))
