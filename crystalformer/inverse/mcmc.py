"""Metropolis-Hastings on crystals with proposals from the prior itself.

Target (one chain per row of a batch; beta is the inverse temperature on the likelihood)::

    pi(X) ∝ p(X) 1[X satisfies the constraints] L(X)^beta,     L(X) = p(y* | X)

where X is a token stream of the prior (its ``log_p`` and ``log_w`` per position, see
:mod:`crystalformer.inverse.proposals`). With constraints the proposals decode from the masked
prior r, and p / r = prod_t Z_t = W(X) (the importance weight). Three moves, one chosen per
chain and step with fixed probabilities (a mixture of kernels, each reversible on its own):

1. **independent**: X' ~ r. q(X' | X) = r(X') = p(X') / W(X'), so

       alpha = [pi(X') q(X | X')] / [pi(X) q(X' | X)]
             = [p(X') L'^b p(X)/W(X)] / [p(X) L^b p(X')/W(X')] = (L'/L)^b W(X') / W(X).

   Without constraints W = 1 and alpha is the likelihood ratio.

2. **suffix**: with m(X) = len(X) - 2 the number of positions between [BOS] and [EOS] (space
   group, Wyckoff letters / [STOP], elements, coordinate and lattice values: every one is a
   draw of the prior), pick i uniformly from 1..m(X), keep X_<i and draw X'_>=i ~ r(. | X_<i).
   Whether position i is a draw depends on the prefix only, so i is also a legal cut of X'
   (X'_<i = X_<i) and the reverse move picks it with probability 1 / m(X'). Then
   q(X' | X) = r(X'_>=i | X_<i) / m(X) with r(X'_>=i | X_<i) = p(X'_>=i | X_<i) / W_>=i(X')
   (W_>=i: the product of Z_t over t >= i), and since p(X') = p(X_<i) p(X'_>=i | X_<i),

       alpha = (L'/L)^b * [W_>=i(X') / W_>=i(X)] * [m(X) / m(X')].

   The proposal density is really a mixture over every cut i' that could have produced X'
   (all i' up to the first position d where X and X' differ); each term of that sum has the
   same ratio because the Z_t of positions i' <= t < d are shared by X and X', so the ratio of
   the mixtures equals the ratio above for the i that was drawn (checked numerically in the
   tests against the explicit sum).

3. **element** (infill): pick a site j uniformly (the number of sites does not change), and
   draw its element a' from the prior's exact conditional over the allowed elements E,
   p(A_j = a | rest) = p(X_a) / S with S = sum_{a in E} p(X_a), every candidate stream scored
   in one batch (as :func:`crystalformer.sampling.substitution.infill` does). The reverse move picks the
   same site of X' and sees the same candidate set, so q(X | X') = p(X) / S and

       alpha = [p(X') L'^b p(X)/S] / [p(X) L^b p(X')/S] = (L'/L)^b.

   The element token is replaced in place (the site order of the stream is kept; re-sorting
   the sites canonically would map several streams to one and break the reverse move).

Streams that the tokenizer cannot turn into a Crystal, or that a constraint excludes, have
pi = 0 and are always rejected.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..sampling.constraints import Constraint, ConstraintMasks
from ..tokenizer import Slot
from .proposals import Streams, decode_after, score_streams, stream_masks

MOVES = ("independent", "suffix", "element")


@dataclass(frozen=True)
class MoveConfig:
    """Probabilities of the three proposal kinds (normalised; a kind with 0 is never used)."""

    independent: float = 0.2
    suffix: float = 0.6
    element: float = 0.2

    def __post_init__(self):
        p = (self.independent, self.suffix, self.element)
        if min(p) < 0 or sum(p) <= 0 or not all(math.isfinite(x) for x in p):
            raise ValueError(f"move probabilities must be >= 0 with a positive sum, got {p}")

    @property
    def probabilities(self) -> np.ndarray:
        p = np.array([self.independent, self.suffix, self.element], dtype=float)
        return p / p.sum()


def beta_schedule(steps: int, beta: float = 1.0, beta_start: float | None = None, anneal_steps: int | None = None):
    """Inverse temperature per step: geometric from ``beta_start`` to ``beta`` over ``anneal_steps``, then ``beta``."""
    finite = np.isfinite(beta) and (beta_start is None or np.isfinite(beta_start))
    if not finite or beta <= 0 or (beta_start is not None and beta_start <= 0):
        raise ValueError(f"inverse temperatures must be finite and > 0, got beta={beta}, beta_start={beta_start}")
    if anneal_steps is not None and anneal_steps < 1:
        raise ValueError(f"anneal_steps must be >= 1, got {anneal_steps}")
    if beta_start is None:
        return np.full(steps, float(beta))
    n = max(1, steps // 2 if anneal_steps is None else anneal_steps)
    ramp = np.geomspace(beta_start, beta, n) if n > 1 else np.array([beta])
    return np.concatenate([ramp, np.full(max(0, steps - n), float(beta))])[:steps]


@dataclass
class ChainResult:
    """Final states of every chain and what happened on the way."""

    streams: Streams
    log_likelihood: np.ndarray  # (N,) log L of the final states (untempered)
    proposed: dict[str, int]
    accepted: dict[str, int]
    rejected_outside: int  # proposals outside the target's support (constraint or undecodable)
    best_log_likelihood: np.ndarray  # (N,) the highest log L each chain visited
    trace: list[float] = field(default_factory=list)  # mean log L over chains after every step

    def acceptance(self) -> dict[str, float | None]:
        rates = {k: (self.accepted[k] / self.proposed[k] if self.proposed[k] else None) for k in MOVES}
        total = sum(self.proposed.values())
        rates["all"] = sum(self.accepted.values()) / total if total else None
        return rates


def decodable(model, ids, values) -> bool:
    from ..errors import CrystalError

    try:
        model.tokenizer.decode(ids, values)
    except (CrystalError, ValueError):
        return False
    return True


def _initial(model, n: int, masks: ConstraintMasks, log_likelihood, generator, max_rounds: int = 20):
    """n independent draws from the masked prior that lie inside the support (re-drawn when not)."""
    keep: Streams | None = None
    lls = np.zeros(0)
    for _ in range(max_rounds):
        need = n - (0 if keep is None else len(keep))
        if need <= 0:
            break
        draw = decode_after(model, [([model.grammar.bos], [0.0])] * need, masks, generator)
        ok = [i for i in range(need) if np.isfinite(draw.log_w[i].sum()) and decodable(model, draw.ids[i],
                                                                                         draw.values[i])]
        if not ok:
            continue
        draw = draw.take(ok)
        ll = log_likelihood(list(zip(draw.ids, draw.values)))
        inside = np.flatnonzero(np.isfinite(ll))  # a likelihood of zero (e.g. implausible contacts): outside
        if not len(inside):
            continue
        draw, ll = draw.take(inside), ll[inside]
        keep = draw if keep is None else Streams(keep.ids + draw.ids, keep.values + draw.values,
                                                 keep.log_p + draw.log_p, keep.log_w + draw.log_w)
        lls = np.concatenate([lls, ll])
    if keep is None or len(keep) < n:
        raise ValueError(f"could not draw {n} starting crystals inside the constraints in {max_rounds} rounds; "
                         "the space groups, element allow-list and atom counts may exclude each other, or too few "
                         "draws have plausible contacts (--allow-implausible lifts that)")
    return keep.take(range(n)), lls[:n]


def metropolis_hastings(model, log_likelihood, n_chains: int, steps: int, moves: MoveConfig | None = None,
                        betas=None, space_groups=None, elements=None, seed: int = 0,
                        progress: bool = False, atoms=None) -> ChainResult:
    """Run ``n_chains`` chains for ``steps`` steps on pi ∝ p(X | constraints) L(X)^beta (module docstring).

    ``log_likelihood``: callable from a list of (ids, values) streams to an (N,) array of log L
    (finite, or -inf for crystals the likelihood rules out). ``betas``: per-step inverse
    temperatures (default 1; :func:`beta_schedule`). ``elements``: global element allow-list,
    also the candidate set of element moves (default: every element the prior knows).
    """
    if n_chains < 1 or steps < 0:
        raise ValueError(f"need n_chains >= 1 and steps >= 0, got {n_chains}, {steps}")
    moves = moves or MoveConfig()
    betas = np.full(steps, 1.0) if betas is None else np.asarray(betas, dtype=float)
    if len(betas) != steps or np.any(betas <= 0):
        raise ValueError(f"betas must hold {steps} positive numbers, got {len(betas)}")
    if isinstance(space_groups, int):
        space_groups = [space_groups]
    constraint = Constraint(None if space_groups is None else frozenset(int(s) for s in space_groups),
                            None if elements is None else frozenset(elements), atoms=atoms)
    masks = ConstraintMasks.compile(constraint, model.grammar)
    grammar = model.grammar
    candidates = np.flatnonzero(masks.elements) if masks.elements is not None else np.asarray(grammar.element_ids)
    generator = torch.Generator(device=model.device).manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    state, ll = _initial(model, n_chains, masks, log_likelihood, generator)
    best = ll.copy()
    proposed = dict.fromkeys(MOVES, 0)
    accepted = dict.fromkeys(MOVES, 0)
    outside = 0
    trace = []
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="design", unit="step")
    started = time.perf_counter()
    for step in iterator:
        if progress and step == 1 and steps > 2:  # the first step measured: a plain estimate for the rest
            per_step = time.perf_counter() - started
            iterator.write(f"design: {n_chains} chains x {steps} steps, about {per_step * (steps - 1):.0f} s to go "
                           f"({per_step:.1f} s per step on this machine)")
        kinds = rng.choice(3, size=n_chains, p=moves.probabilities)
        prop_ids, prop_vals = list(state.ids), list(state.values)
        prop_p, prop_w = list(state.log_p), list(state.log_w)
        log_prior_ratio = np.zeros(n_chains)
        # --- independent and suffix moves: one batched decode with per-chain cuts
        rows = np.flatnonzero(kinds < 2)
        if rows.size:
            cuts = []
            for c in rows:
                m = len(state.ids[c]) - 2
                cuts.append(1 if kinds[c] == 0 else int(rng.integers(1, m + 1)))
            prefixes = [(state.ids[c][:i], state.values[c][:i]) for c, i in zip(rows, cuts)]
            new = decode_after(model, prefixes, masks, generator)
            for k, (c, i) in enumerate(zip(rows, cuts)):
                prop_ids[c], prop_vals[c], prop_p[c], prop_w[c] = new.ids[k], new.values[k], new.log_p[k], new.log_w[k]
                ratio = float(new.log_w[k][i:].sum()) - float(state.log_w[c][i:].sum())
                if kinds[c] == 1:
                    ratio += math.log(len(state.ids[c]) - 2) - math.log(len(new.ids[k]) - 2)
                log_prior_ratio[c] = ratio
        # --- element moves: Gibbs draw from the exact conditional, every candidate scored
        rows_e = np.flatnonzero(kinds == 2)
        if rows_e.size:
            for c, (ids, vals, lp, lw) in zip(rows_e, _element_moves(model, state, rows_e, candidates, masks, rng)):
                prop_ids[c], prop_vals[c], prop_p[c], prop_w[c] = ids, vals, lp, lw
        # --- accept or reject on the likelihood ratio (and the weight ratios above)
        changed = np.flatnonzero([prop_ids[c] is not state.ids[c] for c in range(n_chains)])
        inside = np.array([np.isfinite(log_prior_ratio[c]) and np.isfinite(prop_w[c].sum())
                           and decodable(model, prop_ids[c], prop_vals[c]) for c in changed], dtype=bool)
        ll_new = np.full(n_chains, -np.inf)
        ok = changed[inside] if changed.size else changed
        outside += int(changed.size - ok.size)
        if ok.size:
            ll_new[ok] = log_likelihood([(prop_ids[c], prop_vals[c]) for c in ok])
        log_u = np.log(rng.random(n_chains))
        candidates_ok = set(ok.tolist())
        for c in range(n_chains):
            kind = MOVES[kinds[c]]
            proposed[kind] += 1
            if c not in candidates_ok:
                continue
            diff = ll_new[c] - ll[c] if np.isfinite(ll_new[c]) else -np.inf
            log_alpha = log_prior_ratio[c] + betas[step] * diff
            if log_u[c] < log_alpha:
                accepted[kind] += 1
                state.ids[c], state.values[c], state.log_p[c], state.log_w[c] = (prop_ids[c], prop_vals[c],
                                                                                 prop_p[c], prop_w[c])
                ll[c] = ll_new[c]
        best = np.maximum(best, ll)
        trace.append(float(np.mean(ll)))
        if progress:
            iterator.set_postfix(logL=f"{np.mean(ll):.2f}", acc=f"{sum(accepted.values()) / max(1, sum(proposed.values())):.2f}")
    return ChainResult(state, ll, proposed, accepted, outside, best, trace)


def _element_moves(model, state: Streams, rows, candidates: np.ndarray, masks: ConstraintMasks,
                   rng: np.random.Generator):
    """For each chain in ``rows``: the stream with one site's element drawn from p(A_j | rest), and its terms."""
    slot_of = model.tables.slot.cpu().numpy()
    variants, struct, allow, owner = [], [], [], []
    picks = []
    for c in rows:
        ids = np.asarray(state.ids[c])
        sites = np.flatnonzero(slot_of[ids] == Slot.ELEMENT)
        k = int(sites[rng.integers(len(sites))])
        s_m, a_m = stream_masks(model, state.ids[c], masks)
        picks.append(k)
        for e in candidates:
            v = list(state.ids[c])
            v[k] = int(e)
            variants.append((v, state.values[c]))
            struct.append(s_m)
            allow.append(a_m)
            owner.append(c)
    log_p, log_w = score_streams(model, variants, struct, allow)
    out = []
    n_cand = len(candidates)
    for j, c in enumerate(rows):
        block = slice(j * n_cand, (j + 1) * n_cand)
        total = np.array([a.sum() for a in log_p[block]])
        if not np.isfinite(total).any():
            out.append((state.ids[c], state.values[c], state.log_p[c], state.log_w[c]))
            continue
        prob = np.exp(total - total.max())
        a = int(rng.choice(n_cand, p=prob / prob.sum()))
        i = j * n_cand + a
        out.append((variants[i][0], list(state.values[c]), log_p[i], log_w[i]))
    return out
