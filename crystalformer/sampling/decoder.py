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

    def __post_init__(self):
        finite = all(math.isfinite(float(v)) for v in (self.temperature, self.top_p, self.ess_threshold))
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


def systematic_resample(log_w: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """n indices drawn by systematic resampling from normalized weights exp(log_w)."""
    w = np.exp(log_w - np.max(log_w))
    w /= w.sum()
    u = (float(torch.rand((), generator=generator, dtype=torch.float64)) + np.arange(n)) / n
    return np.minimum(np.searchsorted(np.cumsum(w), u, side="right"), len(w) - 1)


@torch.no_grad()
def decode(model, prefixes: list[list[int]], masks: list[ConstraintMasks], options: DecodeOptions,
           generator: torch.Generator) -> Decoded:
    """Complete every prefix (e.g. ``[BOS]`` or ``[BOS] [COMP] ... [/COMP]``) to a stream ending in [EOS].

    All prefixes must have the same length; ``masks[i]`` constrains particle i.
    """
    grammar, tok = model.grammar, model.tokenizer
    N, device = len(prefixes), model.device
    if N == 0:
        raise ValueError("decode needs at least one prefix")
    if len({len(p) for p in prefixes}) != 1:
        raise ValueError("all prefixes of one decoding batch must have the same length")
    fitting = fitting_grammar(model, len(prefixes[0]))
    states = [grammar.walk(p)[-1] for p in prefixes]
    ids = [list(p) for p in prefixes]
    values = [[0.0] * len(p) for p in prefixes]
    prefix = torch.tensor(prefixes, dtype=torch.long, device=device)  # (N, P)
    slots = torch.tensor([[_prefix_slot(tok, grammar, p, i) for i in range(len(p))] for p in prefixes],
                         dtype=torch.long, device=device)  # (N, P)
    forward = _Forward(model, N, options.kv_cache)
    h_last = forward(prefix, torch.zeros(prefix.shape, device=device), slots)  # (N, C)
    log_lik = np.zeros(N)
    log_w = np.zeros(N)
    log_evidence, resamples = 0.0, 0
    ancestors = np.arange(N)
    masks = list(masks)
    while not all(s.phase == Phase.DONE for s in states):
        if forward.length >= model.config.max_len:
            raise RuntimeError(f"decoding reached max_len={model.config.max_len} before [EOS]")
        tokens, vals, step_ll, step_lw = _step(model, fitting, h_last, states, masks, options, generator)
        log_lik += step_ll
        log_w += step_lw
        for i in range(N):
            if states[i].phase != Phase.DONE:
                ids[i].append(int(tokens[i]))
                values[i].append(float(vals[i]))
            states[i] = fitting.step(states[i], int(tokens[i]))
        t = torch.as_tensor(tokens, device=device)[:, None]  # (N, 1)
        v = torch.as_tensor(vals, dtype=torch.float32, device=device)[:, None]  # (N, 1)
        h_last = forward(t, v, model.tables.slot[t])
        if options.smc and _ess(log_w) < options.ess_threshold * N and np.isfinite(log_w).any():
            idx = systematic_resample(log_w, N, generator)
            log_evidence += _log_mean_exp(log_w)
            log_w = np.zeros(N)
            resamples += 1
            states, masks = [states[i] for i in idx], [masks[i] for i in idx]
            ids, values = [list(ids[i]) for i in idx], [list(values[i]) for i in idx]
            log_lik, ancestors = log_lik[idx], ancestors[idx]
            sel = torch.as_tensor(idx, device=device)
            forward.select(sel)
            h_last = h_last[sel]
    if not np.isfinite(log_w).any():
        raise ValueError("no particle satisfies the constraints (every one reached a dead end): the allow-lists "
                         "and the composition / space groups exclude each other")
    if options.smc:
        log_evidence += _log_mean_exp(log_w)
    return Decoded(ids, values, log_lik, log_w, log_evidence, resamples, ancestors)


class _Forward:
    """Hidden state after the newest position: incremental with the KV cache, or the whole stream recomputed.

    On a GPU the network runs under bf16 autocast, as in training; the heads work in float32.
    """

    def __init__(self, model, batch: int, kv_cache: bool):
        self.model = model
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


def _step(model, fitting, h_last: torch.Tensor, states: list[GrammarState], masks: list[ConstraintMasks],
          options: DecodeOptions, generator: torch.Generator):
    """Next token, value, log q (T = 1) and log-weight increment of every particle.

    ``log q`` uses the model's structural masks; the proposal uses ``fitting`` (the grammar with
    composition counts and an n_max that fits max_len) narrowed by the constraint masks.
    """
    grammar, N = model.grammar, len(states)
    structural = np.stack([grammar.structural(s) for s in states])  # (N, V)
    structural[:, model.comp_id] = False  # the prompt is given, never sampled
    allowed = np.stack([m.apply(fitting.allowed(s), s) for s, m in zip(states, masks)])  # (N, V)
    allowed[:, model.comp_id] = False
    tokens = np.zeros(N, dtype=np.int64)
    vals = np.zeros(N)
    step_ll, step_lw = np.zeros(N), np.zeros(N)
    choice = np.array([s.phase in (Phase.AFTER_BOS, Phase.SPACE_GROUP, Phase.SITE, Phase.ELEMENT) for s in states])
    dead = choice & ~allowed.any(1)
    step_lw[dead] = -np.inf
    allowed[dead] = structural[dead]  # keep decoding the dead particle; its weight is zero
    forced = ~choice
    tokens[forced] = allowed[forced].argmax(1)  # exactly one legal token (padding after [EOS])
    rows = np.flatnonzero(choice)
    if rows.size:
        r = torch.as_tensor(rows, device=h_last.device)
        logits = model.token_head(h_last[r]).float()  # (n, V)
        struct_t = torch.as_tensor(structural[rows], device=logits.device)
        allow_t = torch.as_tensor(allowed[rows], device=logits.device)
        log_q = torch.log_softmax(logits.masked_fill(~struct_t, float("-inf")), -1)  # (n, V) at T = 1
        log_q_t = torch.log_softmax((logits / options.temperature).masked_fill(~struct_t, float("-inf")), -1)
        kept = torch.logsumexp(log_q_t.masked_fill(~allow_t, float("-inf")), -1)  # (n,) log Z_t
        proposal = model.token_distribution(h_last[r], allow_t, options.temperature)
        chosen = proposal.sample(generator, top_p=options.top_p)  # (n,)
        tokens[rows] = chosen.cpu().numpy()
        step_ll[rows] = log_q.gather(-1, chosen[:, None]).squeeze(-1).cpu().numpy()
        if options.smc:
            step_lw[rows] += kept.cpu().numpy()
    for slot, make in ((Slot.COORD, model.coord_distribution), (Slot.LATTICE, model.lattice_distribution)):
        rows = np.flatnonzero(forced & (model.tables.slot.cpu().numpy()[tokens] == slot))
        if rows.size:
            r = torch.as_tensor(rows, device=h_last.device)
            t = torch.as_tensor(tokens[rows], device=h_last.device)
            dist = make(h_last[r], t)
            x = dist.sample(generator)
            vals[rows] = x.cpu().numpy()
            step_ll[rows] = dist.log_prob(x).cpu().numpy()
    return tokens, vals, step_ll, step_lw


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
