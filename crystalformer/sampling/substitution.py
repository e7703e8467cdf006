"""Element substitution (infill): elements of chosen template sites from p(A | rest) ∝ p(X).

Everything but the masked elements stays as in the template (space group, Wyckoff letters,
free parameters, lattice). For a candidate assignment the crystal is rebuilt with its sites
in canonical order (a new element can move a site among others of the same letter) and scored
with the model's exact joint log-likelihood; the conditional of the masked elements is then
the softmax of those scores over all candidate assignments. When there are at most
``exact_limit`` assignments they are all enumerated (exact); otherwise Gibbs sampling updates
one variable at a time from its exact conditional (all its candidates scored in one batch,
the others fixed), several chains at once, and the visited assignments are ranked by visit
frequency. Sites tied with "same element as site j" form one variable.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..crystal import Crystal, canonical_order
from ..errors import CrystalError


@dataclass
class Candidate:
    crystal: Crystal
    probability: float
    log_p: float  # exact log p(X) of the completed crystal under the model
    assignment: dict[int, str]  # template site index -> element


@dataclass
class InfillResult:
    candidates: list[Candidate]  # most probable first
    method: str  # "exact" or "gibbs"
    num_scored: int
    skipped: Counter = field(default_factory=Counter)  # reason -> number of candidate crystals that could not be built

    def table(self, limit: int = 10) -> str:
        lines = [f"{'rank':>4}  {'probability':>11}  {'log p':>9}  {'formula':<16} substitution"]
        for i, c in enumerate(self.candidates[:limit]):
            subs = ", ".join(f"{k}:{v}" for k, v in sorted(c.assignment.items()))
            lines.append(f"{i:>4}  {c.probability:>11.4f}  {c.log_p:>9.2f}  {c.crystal.formula:<16} {subs}")
        lines.append(f"{self.method}: {self.num_scored} crystals scored"
                     + (f"; skipped {dict(self.skipped)}" if self.skipped else ""))
        return "\n".join(lines)


def load_template(template) -> Crystal:
    """A template as a Crystal: a Crystal, a structure, CIF text or a file path; errors name the file."""
    if isinstance(template, Crystal):
        return template
    from ..io import to_structure

    structure = to_structure(str(template) if isinstance(template, Path) else template)
    try:
        return Crystal.from_structure(structure)
    except CrystalError as err:
        if isinstance(template, (str, Path)) and "\n" not in str(template) and str(template) not in str(err):
            raise CrystalError(err.reason, f"template {template}: {err}") from None
        raise


def _variables(template: Crystal, sites, allowed, ties, symbols: list[str]):
    """Groups of tied masked sites and each group's candidate elements."""
    n = len(template.sites)
    if isinstance(sites, str):
        masked = [i for i, s in enumerate(template.sites) if s.element == sites]
        if not masked:
            raise ValueError(f"no site of the template holds {sites!r}; it has "
                             f"{sorted({s.element for s in template.sites})}")
    else:
        masked = sorted({int(i) for i in sites})
        bad = [i for i in masked if not 0 <= i < n]
        if bad or not masked:
            raise ValueError(f"site indices {bad or masked} out of range: the template has sites 0..{n - 1}")
    known = set(symbols)
    per_site = {}
    for i in masked:
        cands = allowed.get(i, symbols) if isinstance(allowed, dict) else (allowed or symbols)
        unknown = sorted(set(cands) - known)
        if unknown:
            raise ValueError(f"unknown element(s) {unknown} in the allow-list of site {i}")
        if not cands:
            raise ValueError(f"the allow-list of site {i} is empty")
        per_site[i] = list(dict.fromkeys(cands))
    root = {i: i for i in masked}

    def find(i):
        while root[i] != i:
            i = root[i]
        return i

    fixed: dict[int, str] = {}
    for i, j in (ties or {}).items():
        i, j = int(i), int(j)
        if i not in root:
            raise ValueError(f"tie {i}={j}: site {i} is not masked")
        if not 0 <= j < n:
            raise ValueError(f"tie {i}={j}: site {j} out of range 0..{n - 1}")
        if j in root:
            root[find(i)] = find(j)
        else:  # tied to an unmasked site: its element is known
            fixed[i] = template.sites[j].element
    groups: dict[int, list[int]] = {}
    for i in masked:
        groups.setdefault(find(i), []).append(i)
    variables = []
    for members in groups.values():
        cands = functools.reduce(lambda a, b: [x for x in a if x in b], [per_site[i] for i in members])
        pinned = {fixed[i] for i in members if i in fixed}
        if len(pinned) > 1:
            raise ValueError(f"sites {members} are tied to unmasked sites with different elements {sorted(pinned)}")
        if pinned:
            cands = [c for c in cands if c in pinned]
        if not cands:
            raise ValueError(f"tied sites {members} have no element in common in their allow-lists")
        variables.append((members, cands))
    return variables


def _build(template: Crystal, variables, choice: tuple[str, ...]) -> tuple[Crystal, dict[int, str]]:
    sites = list(template.sites)
    assignment = {}
    for (members, _), element in zip(variables, choice):
        for i in members:
            sites[i] = replace(sites[i], element=element)
            assignment[i] = element
    ordered = tuple(canonical_order(sites))
    return Crystal(template.space_group, ordered, template.lattice), assignment


class _Scorer:
    """Exact log p(X) of assignments, batched and memoized; unbuildable ones score -inf (counted)."""

    def __init__(self, model, template, variables, batch_size: int):
        self.model, self.template, self.variables, self.batch_size = model, template, variables, batch_size
        self.memo: dict[tuple[str, ...], float] = {}
        self.crystals: dict[tuple[str, ...], tuple[Crystal, dict]] = {}
        self.skipped: Counter = Counter()

    def __call__(self, choices: list[tuple[str, ...]]) -> np.ndarray:
        todo = [c for c in dict.fromkeys(choices) if c not in self.memo]
        built = []
        for c in todo:
            try:
                crystal, assignment = _build(self.template, self.variables, c)
                self.model.tokenizer.encode(crystal)  # raises for what the vocabulary cannot say
            except (CrystalError, ValueError) as err:
                self.memo[c] = -np.inf
                self.skipped[getattr(err, "reason", "invalid")] += 1
                continue
            self.crystals[c] = (crystal, assignment)
            built.append(c)
        for k in range(0, len(built), self.batch_size):
            part = built[k:k + self.batch_size]
            lp = self.model.log_prob([self.crystals[c][0] for c in part]).total.cpu().numpy()
            self.memo.update(zip(part, lp.astype(float)))
        return np.array([self.memo[c] for c in choices])


def infill(model, template, sites, allowed=None, ties=None, n: int = 10, sweeps: int = 100, burn_in: int = 10,
           chains: int = 8, seed: int = 0, batch_size: int = 256, exact_limit: int = 4096) -> InfillResult:
    """Ranked element assignments of the masked ``sites`` of ``template`` with their probabilities.

    ``sites``: template site indices, or an element symbol (every site holding it).
    ``allowed``: candidate elements, one list for all masked sites or {site index: list}
    (default: every element the model knows). ``ties``: {i: j}, site i takes site j's element.
    ``n``: candidates returned. Exact enumeration up to ``exact_limit`` assignments, else Gibbs
    sampling (``chains`` chains, ``sweeps`` sweeps after ``burn_in``), seeded by ``seed``.
    """
    from ..tokenizer import element_symbols

    template = load_template(template)
    n_max = model.config.n_max
    if len(template.sites) > n_max:
        raise ValueError(f"the template has {len(template.sites)} symmetry-distinct (Wyckoff) sites; this model "
                         f"writes at most {n_max} (its n_max): use a smaller or more symmetric cell (e.g. the "
                         f"primitive or conventional standard cell) as the template")
    symbols = [s for s in element_symbols() if s in set(model.tokenizer.vocab)]
    variables = _variables(template, sites, allowed, ties, symbols)
    scorer = _Scorer(model, template, variables, batch_size)
    total = int(np.prod([len(c) for _, c in variables], dtype=np.float64))
    if total <= exact_limit:
        choices = list(itertools.product(*[c for _, c in variables]))
        logp = scorer(choices)
        if not np.isfinite(logp).any():
            raise ValueError(f"none of the {total} candidate assignments gives a crystal the model can score: "
                             f"{dict(scorer.skipped)}")
        prob = np.exp(logp - logp.max())
        prob /= prob.sum()
        order = np.argsort(-prob, kind="stable")[:n]
        ranked = [(choices[i], float(prob[i])) for i in order if np.isfinite(logp[i])]
        method = "exact"
    else:
        ranked = _gibbs(scorer, variables, template, n, sweeps, burn_in, chains, seed)
        method = "gibbs"
    candidates = [Candidate(scorer.crystals[c][0], p, scorer.memo[c], scorer.crystals[c][1]) for c, p in ranked]
    return InfillResult(candidates, method, len(scorer.memo), scorer.skipped)


def _gibbs(scorer: _Scorer, variables, template: Crystal, n: int, sweeps: int, burn_in: int, chains: int,
           seed: int) -> list[tuple[tuple[str, ...], float]]:
    rng = np.random.default_rng(seed)  # explicit generator, no global state
    start = []
    for members, cands in variables:
        current = template.sites[members[0]].element
        start.append(current if current in cands else cands[0])
    states = [list(start) for _ in range(chains)]
    visits: Counter = Counter()
    for sweep in range(burn_in + sweeps):
        for v, (_, cands) in enumerate(variables):
            proposals = [tuple(s[:v] + [c] + s[v + 1:]) for s in states for c in cands]
            logp = scorer(proposals).reshape(chains, len(cands))
            for k in range(chains):
                row = logp[k]
                if not np.isfinite(row).any():
                    continue
                p = np.exp(row - row.max())
                states[k][v] = cands[int(rng.choice(len(cands), p=p / p.sum()))]
        if sweep >= burn_in:
            visits.update(tuple(s) for s in states)
    count = sum(visits.values())
    return [(c, k / count) for c, k in visits.most_common(n) if np.isfinite(scorer.memo[c])]


__all__ = ["Candidate", "InfillResult", "infill"]
