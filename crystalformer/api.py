"""Crystal structure prediction as one library call: draw, rank, remove duplicates, refine.

:func:`predict_structure` is what ``crystalformer csp`` runs for each composition, and what
``crystalformer.predict_structure`` is; :func:`predict_targets` runs it over a CSV of known
structures (``csp --targets`` and the benchmark scripts). It sits above sampling, refinement and physics, so that
none of those imports another upward.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .model import CrystalFormer
    from .physics.ranking import RankStats
    from .physics.relax import RelaxConfig
    from .refinement.model import Refiner
    from .sampling.api import Sample, SampleSet

Rank = Literal["logp", "skeleton", "energy"]
RANKS = ("logp", "skeleton", "energy")
REDRAW_ROUNDS = 3  # extra draws when duplicates leave fewer than n distinct candidates
SKELETON_CANDIDATES = 64  # draws ranked by skeleton probability when ``candidates`` is not given


def default_candidates(rank: str) -> int:
    """Crystals drawn per composition when ``candidates`` is not given: 64 for the skeleton
    ranking, :class:`~crystalformer.physics.ranking.RankConfig`'s (256) for energy."""
    if rank == "energy":
        from .physics.ranking import RankConfig

        return RankConfig.candidates
    return SKELETON_CANDIDATES


def predict_structure(model: CrystalFormer, composition: str, n: int = 20, *, rank: Rank = "logp",
                      distinct: bool = True, candidates: int | None = None, cell: str = "reduced",
                      formula_units: Iterable[int] | None = None, max_atoms: int = 80,
                      space_groups: Iterable[int] | None = None, n_particles: int | None = None,
                      temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, smc: bool = True,
                      refiner: Refiner | str | Path | None = None, sigma_start: float = 0.05, device: str = "cpu",
                      relax_top: int | None = None, potential: str = "chgnet", relax: RelaxConfig | None = None,
                      tie_window: float = 0.03, rank_stats: RankStats | None = None) -> SampleSet:
    """``n`` candidate structures of ``composition`` (e.g. ``"SrTiO3"``), best first.

    - ``rank="logp"``: by the model's log-likelihood; ``"skeleton"``: by the probability of the
      symmetry skeleton (space group, Wyckoff letters, elements) over ``candidates`` draws;
      ``"energy"``: ``candidates`` draws, single points for all, the best ``relax_top`` relaxed
      (default :class:`~crystalformer.physics.ranking.RankConfig`'s, 3), ranked by relaxed energy
      per atom (needs ``crystalformer[physics]``). ``candidates`` defaults to
      :func:`default_candidates` of the ranking (64 for skeleton, 256 for energy).
    - ``distinct``: duplicates (StructureMatcher) of a better-ranked candidate are removed; with
      ``rank="logp"`` twice ``n`` are drawn, and while fewer than ``n`` distinct ones remain, up
      to :data:`REDRAW_ROUNDS` more draws (new seeds) join the pool, which is ranked again. The
      result's ``drawn`` and ``duplicates`` say how many were drawn and removed.
    - ``refiner``: positions refined by the score model before ranking by energy, after the
      other rankings.
    - ``cell``, ``formula_units``, ``max_atoms``, ``space_groups``, ``n_particles``, ``temperature``,
      ``top_p``, ``smc``: as in :func:`crystalformer.sampling.api.predict_structure`.
    """
    from .sampling.api import MAX_CSP_PARTICLES
    from .sampling.api import predict_structure as draw
    from .sampling.dedup import MAX_PAIRWISE, distinct_samples
    from .sampling.skeleton import rank_by_skeleton

    if rank not in RANKS:
        raise ValueError(f"rank must be one of {', '.join(RANKS)}; got {rank!r}")
    if candidates is None:
        candidates = default_candidates(rank)
    elif candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    formula_units = None if formula_units is None else list(formula_units)  # drawn again below: read once
    space_groups = None if space_groups is None else list(space_groups)
    options = dict(cell=cell, formula_units=formula_units, max_atoms=max_atoms, space_groups=space_groups,
                   temperature=temperature, top_p=top_p, seed=seed, smc=smc)

    def refined(samples: list[Sample]) -> list[Sample]:
        return samples if refiner is None else refine_samples(refiner, samples, sigma_start, seed, device)

    if rank == "energy":
        from .physics import require
        from .physics.potential import load_potential
        from .physics.ranking import RankConfig, rank_by_energy

        require('rank="energy"')
        config = RankConfig(candidates=max(candidates, n),
                            relax_top=RankConfig.relax_top if relax_top is None else relax_top, tie_window=tie_window,
                            dedup=distinct, **({} if relax is None else {"relax": relax}))
        result = draw(model, composition, config.candidates, n_particles=_particles(n_particles, config.candidates),
                      **options)
        pot = load_potential(potential) if isinstance(potential, str) else potential
        result.samples = rank_by_energy(refined(result.samples), pot, n=n, config=config, stats=rank_stats)
        result.drawn = config.candidates
        return result
    dedup = distinct and 2 * n <= MAX_PAIRWISE
    drawn = n
    if rank == "skeleton":  # a wider pool: the skeleton order brings up what log p buries
        drawn = min(max(2 * n, candidates), MAX_CSP_PARTICLES)
    elif dedup:  # twice as many, the first n distinct ones kept
        drawn = min(2 * n, MAX_CSP_PARTICLES)
    result = draw(model, composition, drawn, n_particles=_particles(n_particles, drawn), **options)
    if rank == "skeleton":
        result.samples = rank_by_skeleton(model, result.samples)
    pool, total = list(result.samples), drawn  # in rank order, each sample scored once
    if dedup:
        result.samples, result.duplicates = distinct_samples(result.samples, n)
        for extra in range(1, REDRAW_ROUNDS + 1):  # too few distinct: draw again (new seed), merge, rank again
            if len(result.samples) >= n or total + drawn > MAX_PAIRWISE:
                break
            more = draw(model, composition, drawn, n_particles=_particles(n_particles, drawn),
                        **{**options, "seed": seed + 7919 * extra})
            pool += rank_by_skeleton(model, more.samples) if rank == "skeleton" else more.samples
            total += drawn
            pool.sort(key=_skeleton_order if rank == "skeleton" else lambda s: -s.log_likelihood)
            result.samples, result.duplicates = distinct_samples(pool, n)
    result.samples = refined(result.samples[:n])
    result.drawn = total
    return result


def refine_samples(refiner: Refiner | str | Path, samples: list[Sample], sigma_start: float = 0.05, seed: int = 0,
                   device: str = "cpu") -> list[Sample]:
    """Copies of ``samples`` whose crystals the score model refined (log-likelihoods stay the sampler's)."""
    from .refinement.api import refine_crystals

    index = [i for i, s in enumerate(samples) if s.crystal is not None]
    crystals = refine_crystals(refiner, [samples[i].crystal for i in index], sigma_start=sigma_start, seed=seed,
                               device=device)
    out = list(samples)
    for i, crystal in zip(index, crystals):
        out[i] = replace(samples[i], crystal=crystal)
    return out


def _skeleton_order(s: Sample) -> tuple[int, float, float]:
    """The order of :func:`rank_by_skeleton` for samples it has scored: skeleton log p, then log p; unbuilt last."""
    if s.crystal is None or s.skeleton_log_p is None:
        return (1, 0.0, 0.0)
    return (0, -s.skeleton_log_p, -s.log_likelihood)


def _particles(n_particles: int | None, drawn: int) -> int | None:
    return None if n_particles is None else max(n_particles, drawn)


@dataclass
class TargetPredictions:
    """CSP over a set of known structures: every prediction with its target and rank, and the skipped targets."""

    samples: list[Sample] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # "<material_id>_<rank>"
    rows: list[dict] = field(default_factory=list)  # per prediction: material_id, rank, target_formula
    skipped: list[dict] = field(default_factory=list)  # per target that got no prediction: material_id, reason
    num_targets: int = 0


def predict_targets(model: CrystalFormer, targets, n: int = 20, *, indices: Iterable[int] | None = None, seed: int = 0,
                    progress: bool = False, predict: Callable[[str, int], SampleSet] | None = None) -> TargetPredictions:
    """CSP for each structure of a CDVAE CSV (or a list of :class:`crystalformer.io.Record`): the composition of
    its primitive cell, ``n`` predictions each, ranked, duplicates kept (the CDVAE/DiffCSP protocol).

    ``indices``: which rows (default all); target i is predicted with seed ``seed + i``, so a subset gets the
    same predictions as a full run. ``predict(formula, seed)``: how one target is predicted (default
    :func:`predict_structure` with ``cell="primitive"``, ``distinct=False``). A target whose CIF cannot be
    read or whose composition the model cannot hold is skipped and counted with its reason.
    """
    from .errors import CrystalError
    from .io import read_csv_records, structure_from_cif

    records = list(read_csv_records(targets)) if isinstance(targets, (str, Path)) else list(targets)
    chosen = range(len(records)) if indices is None else [int(i) for i in indices]
    if predict is None:
        def predict(formula: str, s: int) -> SampleSet:
            return predict_structure(model, formula, n, cell="primitive", distinct=False, seed=s)
    out = TargetPredictions(num_targets=len(chosen))
    if progress:
        from tqdm.auto import tqdm

        chosen = tqdm(chosen, desc="csp", unit="target")
    for i in chosen:
        rec = records[i]
        try:
            structure = structure_from_cif(rec.cif, f"{rec.source} row {rec.row}")
            formula = structure.get_primitive_structure().composition.formula
            result = predict(formula, seed + i)
        except (ValueError, CrystalError) as err:
            out.skipped.append({"material_id": rec.material_id, "reason": str(err)})
            continue
        for rank, s in enumerate(result.samples):
            out.samples.append(s)
            out.names.append(f"{rec.material_id}_{rank}")
            out.rows.append({"material_id": rec.material_id, "rank": rank, "target_formula": formula})
    return out
