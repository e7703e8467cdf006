"""Generation and crystal structure prediction: typed functions over :func:`decode`.

``sample`` draws crystals from p(X), optionally in given space groups and with element
allow-lists; ``predict_structure`` draws from p(X | composition) (CSP). Both return a
:class:`SampleSet`: every particle becomes a :class:`Sample` holding its Crystal (or the reason
it could not be built) and its log-likelihood under the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import CrystalError
from .constraints import (
    Branch,
    Constraint,
    ConstraintMasks,
    assign_branches,
    branch_weights,
    composition_branches,
    parse_composition,
)
from .decoder import DecodeOptions, decode, fitting_grammar, systematic_resample

if TYPE_CHECKING:
    from ..crystal import Crystal


@dataclass
class Sample:
    """One decoded crystal: its :class:`Crystal` (None when the stream does not make one, with the
    ``reason`` code and ``error`` message saying why), log-likelihood and token stream."""

    crystal: Crystal | None
    log_likelihood: float
    ids: list[int] = field(repr=False, default_factory=list)
    values: list[float] = field(repr=False, default_factory=list)
    error: str | None = None
    prompt: str | None = None  # the composition prompt it was decoded with (CSP)
    physics: dict | None = None  # energies, relaxation and ranks (crystalformer.physics), when computed
    skeleton_log_p: float | None = None  # log p of the discrete tokens alone, when ranked by it (skeleton.py)
    reason: str | None = None  # failure code when crystal is None (e.g. "too_close", "invalid")

    def summary(self) -> dict:
        c = self.crystal
        out = {"log_likelihood": round(float(self.log_likelihood), 4), "error": self.error, "prompt": self.prompt}
        if self.skeleton_log_p is not None:
            out["skeleton_log_p"] = round(float(self.skeleton_log_p), 4)
        if c is not None:
            out.update(space_group=c.space_group, formula=c.formula, num_atoms=c.num_atoms,
                       wyckoff=c.wyckoff_sequence, text=c.to_text())
        if self.physics is not None:
            out.update(self.physics)
        return out


@dataclass
class SampleSet:
    samples: list[Sample]
    log_evidence: float | None = None  # log mass of the model on constraint-satisfying crystals (SMC estimate)
    resamples: int = 0
    drawn: int | None = None  # candidates drawn before ranking and removing duplicates (CSP)
    duplicates: int | None = None  # candidates removed as duplicates of better-ranked ones (CSP; None: not checked)

    @property
    def crystals(self) -> list:
        return [s.crystal for s in self.samples if s.crystal is not None]

    def failures(self) -> Counter:
        return Counter(s.reason or "invalid" for s in self.samples if s.crystal is None)

    def __len__(self) -> int:
        return len(self.samples)


def generator_for(model, seed: int) -> torch.Generator:
    """A seeded random generator on the model's device (CUDA sampling needs a CUDA generator)."""
    return torch.Generator(device=model.device).manual_seed(int(seed))


def _to_samples(model, decoded, prompts=None) -> list[Sample]:
    out = []
    for i, (ids, vals) in enumerate(zip(decoded.ids, decoded.values)):
        crystal, error, reason = None, None, None
        try:
            crystal = model.tokenizer.decode(ids, vals)
        except (CrystalError, ValueError) as err:
            reason = getattr(err, "reason", "invalid")
            error = f"{reason}: {err}"
        out.append(Sample(crystal, float(decoded.log_likelihood[i]), ids, vals, error,
                          None if prompts is None else prompts[i], reason=reason))
    return out


def sample(model, n: int, space_groups=None, elements=None, site_elements=None, temperature: float = 1.0,
           top_p: float = 1.0, batch_size: int = 256, seed: int = 0, smc: bool = True,
           progress: bool = False, kv_cache: bool = True, atoms=None) -> SampleSet:
    """Draw ``n`` crystals from the model (optionally in ``space_groups``, with element allow-lists).

    ``elements``: symbols every site must use; ``site_elements``: {site index: symbols}.
    ``atoms``: allowed numbers of atoms in the conventional cell (an int or a set), enforced by the
    grammar (multiplicities must sum to one of them), not by filtering.
    With constraints and ``smc`` the samples follow p(X | constraints) exactly (see decoder).
    :func:`sample_stream` draws the same crystals batch by batch, without holding them all.
    """
    samples, evidence, resamples = [], [], 0
    for batch in sample_stream(model, n, space_groups, elements, site_elements, temperature, top_p, batch_size,
                               seed, smc, progress, kv_cache, atoms):
        samples += batch.samples
        evidence.append(batch.log_evidence)
        resamples += batch.resamples
    return SampleSet(samples, float(np.mean(evidence)) if evidence else None, resamples)


def sample_stream(model, n: int, space_groups=None, elements=None, site_elements=None, temperature: float = 1.0,
                  top_p: float = 1.0, batch_size: int = 256, seed: int = 0, smc: bool = True,
                  progress: bool = False, kv_cache: bool = True, atoms=None) -> Iterator[SampleSet]:
    """:func:`sample`, one :class:`SampleSet` per decoded batch of at most ``batch_size`` crystals.

    Memory stays bounded by the batch whatever ``n`` is; the crystals are exactly those
    :func:`sample` returns for the same arguments and seed.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    if batch_size > MAX_BATCH:  # one batch is decoded at once: its memory grows with it
        raise ValueError(f"batch_size {batch_size} is more than {MAX_BATCH:,} crystals decoded at once; any n streams "
                         "in batches, so a smaller batch loses nothing")
    if isinstance(space_groups, int):
        space_groups = [space_groups]
    constraint = Constraint(
        space_groups=None if space_groups is None else frozenset(int(s) for s in space_groups),
        elements=None if elements is None else frozenset(elements),
        site_elements=tuple((int(i), frozenset(els)) for i, els in (site_elements or {}).items()),
        atoms=atoms)
    masks = ConstraintMasks.compile(constraint, model.grammar)
    options = DecodeOptions(temperature=temperature, top_p=top_p, smc=smc, kv_cache=kv_cache)
    constrained = space_groups is not None or elements is not None or bool(site_elements) or atoms is not None
    # with constraints, decode twice as many particles and draw the batch from their weights
    oversample = 2 if constrained and smc else 1
    generator = generator_for(model, seed)
    for start in _batches(n, batch_size, progress, "sample"):
        size = min(batch_size, n - start)
        decoded = decode(model, [[model.grammar.bos]] * (oversample * size), [masks] * (oversample * size), options,
                         generator)
        keep = _select(decoded.log_weight, size, generator) if smc else np.arange(size)
        decoded_samples = _to_samples(model, decoded)
        yield SampleSet([decoded_samples[i] for i in keep], decoded.log_evidence, decoded.resamples)


MAX_BATCH = 100_000  # crystals decoded at once by sample()
MAX_CSP_PARTICLES = 100_000  # CSP decodes its particles in one batch, so memory grows with their number


def predict_structure(model, composition, n: int = 20, cell: str = "reduced", formula_units=None,
                      max_atoms: int = 80, space_groups=None, n_particles: int | None = None,
                      temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, smc: bool = True) -> SampleSet:
    """Crystal structure prediction: ``n`` crystals from p(X | composition), ranked by log-likelihood.

    The composition becomes one or more prompts (:func:`composition_branches`); particles start
    spread over them (a reduced formula: in proportion to how often each number of formula units
    occurs in the training data, :func:`branch_weights`; otherwise evenly), and sequential Monte
    Carlo moves them towards the prompts whose exact completions the model finds likely. ``n_particles`` (default max(n, 64, branches))
    particles are decoded in one batch; ``n`` of them are returned.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > MAX_CSP_PARTICLES or (n_particles is not None and not 1 <= n_particles <= MAX_CSP_PARTICLES):
        raise ValueError(f"CSP decodes all its particles in one batch: n and n_particles must be 1 to "
                         f"{MAX_CSP_PARTICLES:,}, got n={n}, n_particles={n_particles}")
    num_elements = len(parse_composition(composition))
    grammar = fitting_grammar(model, 3 + 2 * num_elements)  # [BOS] [COMP] (El N)* [/COMP]
    branches = composition_branches(composition, grammar, cell, formula_units, max_atoms, space_groups)
    N = max(2 * n, 64, len(branches)) if n_particles is None else max(n_particles, n)
    prior = branch_weights(branches) if cell == "reduced" and not formula_units else None
    assigned = assign_branches(branches, N, prior)
    masks_of = {b: ConstraintMasks.compile(Constraint(space_groups=b.space_groups), grammar) for b in branches}
    prefixes = [b.prompt_ids(grammar) for b in assigned]
    options = DecodeOptions(temperature=temperature, top_p=top_p, smc=smc)
    generator = generator_for(model, seed)
    decoded = decode(model, prefixes, [masks_of[b] for b in assigned], options, generator)
    prompts = [assigned[a].formula for a in decoded.ancestors]
    samples = _to_samples(model, decoded, prompts)
    keep = _select(decoded.log_weight, n, generator) if smc else evenly_spaced(len(decoded.log_weight), n)
    chosen = sorted((samples[i] for i in keep), key=lambda s: -s.log_likelihood)
    return SampleSet(chosen, decoded.log_evidence, decoded.resamples)


def _select(log_weight: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """n particle indices drawn by systematic resampling (equal weights: the first n, each once)."""
    if not np.isfinite(log_weight).any():
        raise ValueError("no particle satisfies the constraints")
    if np.all(log_weight == log_weight[0]):
        return evenly_spaced(len(log_weight), n)
    return systematic_resample(log_weight, n, generator)


def evenly_spaced(N: int, n: int) -> np.ndarray:
    """n of N equally weighted particles, spread evenly over their order (particles are assigned to
    prompts in blocks, so the first n would all share the first prompts)."""
    return np.floor((np.arange(n) + 0.5) * N / n).astype(np.int64)


def _batches(n: int, batch_size: int, progress: bool, what: str):
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(starts, desc=what, unit="batch")
    return starts


__all__ = ["Branch", "Sample", "SampleSet", "predict_structure", "sample", "sample_stream"]
