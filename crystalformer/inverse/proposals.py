"""Proposals drawn from the prior: decoding a stream's suffix after a kept prefix, and scoring streams.

Both return, per stream, two arrays aligned with its positions:

- ``log_p[t]``: the prior's log-probability (discrete choice, structural masks, T = 1) or
  log-density (coordinate / lattice value) of position t; 0 at [BOS] and at forced tokens;
- ``log_w[t]``: log Z_t, the prior mass that the constraint masks (space groups, element
  allow-list) keep at a discrete choice, 0 elsewhere (and everywhere without constraints);
  -inf where the stream's token lies outside the constraint.

Masked decoding draws x_t from r(x_t | x_<t) = p(x_t | x_<t) 1[x_t allowed] / Z_t, so for a
stream X that satisfies the constraint p(X) / r(X) = prod_t Z_t = exp(sum_t log_w[t]): the
sums of ``log_w`` are the importance weights that make masked proposals exact in
Metropolis-Hastings (see :mod:`crystalformer.inverse.mcmc`).

Without a composition prompt the grammar state after a prefix does not depend on which
elements it holds, and the constraint masks depend only on the phase and the number of sites,
so a stream with one element replaced has exactly the masks of the original (used by the
element moves, which score many such variants at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..grammar import Phase
from ..model.crystalformer import DISCRETE_SLOTS
from ..sampling.constraints import ConstraintMasks
from ..sampling.decoder import DecodeOptions, decode, fitting_grammar
from ..tokenizer import Slot

CHOICE_PHASES = (Phase.AFTER_BOS, Phase.SPACE_GROUP, Phase.SITE, Phase.ELEMENT)


@dataclass
class Streams:
    """Token streams with their per-position prior terms (see module docstring)."""

    ids: list[list[int]]
    values: list[list[float]]
    log_p: list[np.ndarray]
    log_w: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def total_log_p(self) -> np.ndarray:
        return np.array([float(a.sum()) for a in self.log_p])

    def total_log_w(self) -> np.ndarray:
        return np.array([float(a.sum()) for a in self.log_w])

    def take(self, index) -> Streams:
        return Streams([self.ids[i] for i in index], [self.values[i] for i in index],
                       [self.log_p[i] for i in index], [self.log_w[i] for i in index])


def decode_after(model, prefixes: list[tuple[list[int], list[float]]], masks: ConstraintMasks,
                 generator: torch.Generator) -> Streams:
    """Keep each prefix (ids, values; [BOS] first) and draw the rest of the stream from the masked prior.

    One call of the decoding kernel (:func:`crystalformer.sampling.decoder.decode`): a stream still
    inside its prefix is teacher-forced (its terms are scored, nothing is drawn), so prefixes of
    different lengths share one batch. A prefix that is a whole stream (ending in [EOS]) is only scored.
    """
    bos = model.grammar.bos
    if not prefixes:
        raise ValueError("decode_after needs at least one prefix")
    if any(not p[0] or p[0][0] != bos for p in prefixes):
        raise ValueError("every prefix must start with [BOS]")
    decoded = decode(model, [[bos]] * len(prefixes), masks, DecodeOptions(smc=False), generator,
                     grammar=fitting_grammar(model, 1), forced=[(list(p[0][1:]), list(p[1][1:])) for p in prefixes],
                     records=True, raise_if_dead=False)
    return Streams(decoded.ids, decoded.values, decoded.log_p, decoded.log_z)


def stream_masks(model, ids, masks: ConstraintMasks) -> tuple[np.ndarray, np.ndarray]:
    """(T, V) structural masks and (T, V) constraint-narrowed masks before each position of a stream."""
    grammar = model.grammar
    fitting = fitting_grammar(model, 1)
    states = grammar.walk(ids)[:-1]
    structural = np.stack([grammar.structural(s) for s in states])
    allowed = np.stack([masks.apply(fitting.allowed(s), s) for s in states])
    structural[:, model.comp_id] = False
    allowed[:, model.comp_id] = False
    return structural, allowed


@torch.no_grad()
def score_streams(model, streams: list[tuple[list[int], list[float]]], structural: list[np.ndarray],
                  allowed: list[np.ndarray], batch_size: int = 256) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-position ``log_p`` and ``log_w`` of whole streams by teacher forcing (one forward pass per batch).

    ``structural[i]`` / ``allowed[i]``: the (T_i, V) masks of stream i (:func:`stream_masks`).
    """
    out_p, out_w = [], []
    for k in range(0, len(streams), batch_size):
        part = streams[k:k + batch_size]
        lp, lw = stream_terms(model, part, structural[k:k + batch_size], allowed[k:k + batch_size])
        for i in range(len(part)):
            n = len(part[i][0])
            out_p.append(np.concatenate([[0.0], lp[i, :n - 1].numpy()]))
            out_w.append(np.concatenate([[0.0], lw[i, :n - 1].numpy()]))
    return out_p, out_w


def stream_terms(model, streams, structural, allowed) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) float64 tensors of ``log_p`` and ``log_w`` for positions 1.. of one batch of streams.

    Differentiable in the model's parameters (used by fine-tuning); 0 on padding.
    """
    from ..model.batching import collate
    from .property import stream_examples

    batch = collate(stream_examples(model.tokenizer, streams), model.tokenizer.pad_id)
    ids, vals, slots, valid = (batch[key].to(model.device) for key in ("ids", "values", "slots", "mask"))
    B, T = ids.shape
    struct = torch.zeros((B, T, model.tokenizer.vocab_size), dtype=torch.bool)
    allow = torch.zeros_like(struct)
    for b in range(B):
        n = len(streams[b][0])
        struct[b, :n] = torch.from_numpy(structural[b])
        allow[b, :n] = torch.from_numpy(allowed[b])
    h, _ = model.hidden(ids, vals, slots)  # (B, T, C)
    h = h[:, :-1].float()  # (B, T-1, C): position t predicts t + 1
    t_ids, t_vals, t_slots, t_valid = ids[:, 1:], vals[:, 1:], slots[:, 1:], valid[:, 1:]
    lp = torch.zeros((B, T - 1), dtype=torch.float64)
    lw = torch.zeros((B, T - 1), dtype=torch.float64)
    disc = t_valid & torch.isin(t_slots, torch.tensor(DISCRETE_SLOTS, device=ids.device))
    b, t = disc.nonzero(as_tuple=True)
    if b.numel():
        s_m, a_m = struct[:, 1:][b, t], allow[:, 1:][b, t]  # (n, V)
        log_q = torch.log_softmax(model.token_head(h[b, t]).float().masked_fill(~s_m, float("-inf")), -1)
        tok = t_ids[b, t]
        lp = lp.index_put((b, t), log_q.gather(-1, tok[:, None]).squeeze(-1).double())
        kept = torch.logsumexp(log_q.masked_fill(~a_m, float("-inf")), -1).double()
        inside = a_m.gather(-1, tok[:, None]).squeeze(-1)
        lw = lw.index_put((b, t), torch.where(inside, kept, torch.full_like(kept, -np.inf)))
    for slot, make in ((Slot.COORD, model.coord_distribution), (Slot.LATTICE, model.lattice_distribution)):
        b, t = (t_valid & (t_slots == slot)).nonzero(as_tuple=True)
        if b.numel():
            lp = lp.index_put((b, t), make(h[b, t], t_ids[b, t]).log_prob(t_vals[b, t]).double())
    return lp, lw
