"""Inverse design: crystals from p(X | y*) ∝ p(X) p(y* | X) by Metropolis-Hastings (:mod:`.mcmc`).

``design`` ties each :class:`~crystalformer.inverse.targets.Target` to the property model of the
same name, runs ``n`` chains for ``steps`` steps and returns the final state of every chain,
ranked: crystals meeting every target first, then by the target log-likelihood. A target that
no chain reached raises :class:`UnreachableTargetError` naming the best value seen (a fixed
number of steps: the search never loops without end); one outside anything the property
model has seen is refused before sampling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .mcmc import ChainResult, MoveConfig, beta_schedule, metropolis_hastings
from .targets import Target, parse_targets

UNREACHABLE_SIGMAS = 3.0  # a target this many sigmas beyond the training range cannot be met


class UnreachableTargetError(ValueError):
    """No design meets the targets; ``result`` (when set) holds what the chains reached."""

    def __init__(self, message: str, result: DesignResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass
class DesignResult:
    samples: list  # crystalformer.sampling.api.Sample, ranked
    predictions: dict[str, np.ndarray]  # target name -> (n,) predicted values, in the samples' order
    log_target: np.ndarray  # (n,) log L of every target together
    satisfied: np.ndarray  # (n,) bool: every target met
    chains: ChainResult
    targets: list[Target]  # resolved (min / max as thresholds)
    chain_index: np.ndarray  # (n,) chain of each ranked sample
    wall_s: float = 0.0
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        acc = self.chains.acceptance()
        return {"targets": [str(t) for t in self.targets], "n": len(self.samples),
                "meeting_all_targets": int(self.satisfied.sum()),
                "fraction_meeting": float(self.satisfied.mean()) if len(self.samples) else 0.0,
                "acceptance": {k: None if v is None else round(v, 4) for k, v in acc.items()},
                "proposed": self.chains.proposed, "accepted": self.chains.accepted,
                "rejected_outside_support": self.chains.rejected_outside, "wall_s": round(self.wall_s, 1),
                "mean_log_target_trace": [round(x, 4) for x in self.chains.trace], **self.settings}

    def rows(self) -> list[dict]:
        """Per ranked sample: rank, chain, predicted properties, target log-likelihood, whether met."""
        return [{"rank": i, "chain": int(self.chain_index[i]), "meets_targets": bool(self.satisfied[i]),
                 "log_target": round(float(self.log_target[i]), 4),
                 "predicted": {k: round(float(v[i]), 5) for k, v in self.predictions.items()}}
                for i in range(len(self.samples))]


def _match(models, targets: list[Target]) -> dict:
    by_name = {}
    for m in models:
        by_name.setdefault(m.target, m)
    missing = [t.name for t in targets if t.name not in by_name]
    if missing:
        raise ValueError(f"no property model for target(s) {missing}; the property models given predict "
                         f"{sorted(by_name) or 'nothing'}")
    return {t.name: by_name[t.name] for t in targets}


def _check_reachable(target: Target, model) -> None:
    lo = float(model.metadata.get("train_min", -np.inf)) - UNREACHABLE_SIGMAS * model.sigma
    hi = float(model.metadata.get("train_max", np.inf)) + UNREACHABLE_SIGMAS * model.sigma
    if target.kind == "window":
        a, b = target.value - target.tolerance, target.value + target.tolerance
    elif target.kind == "value":
        a = b = target.value
    elif target.kind == "below":
        a, b = -np.inf, target.value
    else:
        a, b = target.value, np.inf
    if b < lo or a > hi:
        raise UnreachableTargetError(
            f"target {target} lies outside what the property model can predict: its training values span "
            f"{model.metadata.get('train_min'):.4g} .. {model.metadata.get('train_max'):.4g} "
            f"(sigma {model.sigma:.3g}); no design can reach it")


def _as_targets(targets) -> list[Target]:
    if isinstance(targets, str) or (targets and isinstance(list(targets)[0], str)):
        return parse_targets(targets)
    return list(targets)


def target_likelihood(property_models, targets):
    """(resolved targets, {name: model}, predict, log_likelihood) for the targets' property models.

    ``predict(streams)``: {name: (N,) predictions}; ``log_likelihood(streams)``: (N,) sum of the
    targets' log-likelihoods (properties independent given X). Refuses targets that no property
    model predicts and targets outside anything the models have seen.
    """
    targets = _as_targets(targets)
    if isinstance(property_models, dict):
        property_models = list(property_models.values())
    elif not isinstance(property_models, (list, tuple)):
        property_models = [property_models]
    models = _match(property_models, targets)
    resolved = [t.resolve(models[t.name]) for t in targets]
    for t in resolved:
        _check_reachable(t, models[t.name])

    def predict(streams) -> dict[str, np.ndarray]:
        return {t.name: models[t.name].predict_streams(streams) for t in resolved}

    def log_likelihood(streams) -> np.ndarray:
        preds = predict(streams)
        return sum(t.log_likelihood(preds[t.name], models[t.name].sigma) for t in resolved)

    return resolved, models, predict, log_likelihood


def _restricted_to_plausible(prior, log_likelihood):
    """log L(X) where X has plausible contacts, -inf elsewhere (what a chemist would discard)."""
    from ..errors import CrystalError
    from ..sampling.output import has_plausible_contacts

    def plausible(ids, values) -> bool:
        try:
            crystal = prior.tokenizer.decode(ids, values)
        except (CrystalError, ValueError):
            return False
        return has_plausible_contacts(crystal)

    def restricted(streams) -> np.ndarray:
        ok = np.array([plausible(ids, values) for ids, values in streams], dtype=bool)
        out = np.full(len(streams), -np.inf)
        if ok.any():
            out[ok] = log_likelihood([s for s, keep in zip(streams, ok) if keep])
        return out

    return restricted


def design(prior, property_models, targets, n: int = 100, steps: int = 100, moves: MoveConfig | None = None,
           beta: float = 1.0, beta_start: float | None = None, anneal_steps: int | None = None, space_groups=None,
           elements=None, seed: int = 0, progress: bool = False, require_reached: bool = True,
           atoms=None, plausible: bool = True) -> DesignResult:
    """``n`` crystals from p(X | constraints) p(targets | X)^beta (the final states of ``n`` chains), ranked.

    ``property_models``: PropertyModel objects (one per target name). ``targets``: Target objects
    or strings (:func:`parse_targets`). ``beta_start``: anneal the likelihood's inverse temperature
    geometrically from it to ``beta`` over ``anneal_steps`` (default half the steps). ``atoms``:
    allowed atom counts of the conventional cell (grammar-enforced). ``plausible``: the target is
    restricted to crystals whose closest atoms are at least 0.7 x the sum of their covalent radii
    (proposals with closer atoms are rejected as outside its support; chains start inside it).
    """
    from ..sampling.api import Sample
    from ..sampling.constraints import atom_counts

    t0 = time.time()
    targets = _as_targets(targets)
    resolved, models, predict, log_likelihood = target_likelihood(property_models, targets)
    if plausible:
        log_likelihood = _restricted_to_plausible(prior, log_likelihood)

    betas = beta_schedule(steps, beta, beta_start, anneal_steps)
    chains = metropolis_hastings(prior, log_likelihood, n, steps, moves, betas, space_groups, elements, seed,
                                 progress, atoms)
    streams = list(zip(chains.streams.ids, chains.streams.values))
    preds = predict(streams)
    met = np.all([t.satisfied(preds[t.name], models[t.name].sigma) for t in resolved], axis=0)
    log_t = chains.log_likelihood
    order = np.lexsort((-log_t, ~met))  # met first, then by target log-likelihood
    prior_lp = chains.streams.total_log_p()
    samples = []
    for c in order:
        crystal = prior.tokenizer.decode(chains.streams.ids[c], chains.streams.values[c])
        samples.append(Sample(crystal, float(prior_lp[c]), chains.streams.ids[c], chains.streams.values[c]))
    settings = {"steps": steps, "chains": n, "beta": beta, "beta_start": beta_start, "anneal_steps": anneal_steps,
                "moves": dict(zip(("independent", "suffix", "element"), (moves or MoveConfig()).probabilities.round(4)
                                  .tolist())),
                "space_groups": None if space_groups is None else sorted(int(s) for s in np.atleast_1d(space_groups)),
                "elements": None if elements is None else sorted(elements), "seed": seed,
                "atoms": None if atoms is None else sorted(atom_counts(atoms)),
                "plausible_contacts_only": plausible,
                "sigma": {t.name: models[t.name].sigma for t in resolved}}
    result = DesignResult(samples, {k: v[order] for k, v in preds.items()}, log_t[order], met[order], chains,
                          resolved, order, time.time() - t0, settings)
    explicit = [t for t, raw in zip(resolved, targets) if raw.kind not in ("min", "max")]
    if require_reached and explicit and not met.any():
        best = []
        for t in explicit:
            p = preds[t.name]
            gap = np.abs(p - t.value) if t.kind in ("window", "value") else (p - t.value if t.kind == "below"
                                                                               else t.value - p)
            best.append(f"{t.name}: best {p[int(np.argmin(gap))]:.4g} (wanted {t})")
        raise UnreachableTargetError(
            f"none of the {n} chains met {', '.join(str(t) for t in explicit)} after {steps} steps; "
            + "; ".join(best) + ". Run more steps, relax the tolerance, or lift the constraints", result)
    return result


def write_designs(result: DesignResult, out, overwrite: bool = False, meta: dict | None = None) -> dict:
    """CIFs and a ranked ``samples.json`` (predicted properties, acceptance statistics) in folder ``out``."""
    from ..sampling.output import write_samples

    names = [f"design_{i:05d}" for i in range(len(result.samples))]
    return write_samples(result.samples, out, overwrite=overwrite, names=names, extra=result.rows(),
                         meta={**result.summary(), **(meta or {})})
