"""Constraints on sampled crystals, as boolean masks over the vocabulary, and composition targets.

A :class:`Constraint` restricts the space group (a set), the elements of every site (a global
allow-list) and of particular sites (per-site allow-lists, by site order). A composition
target becomes a list of :class:`Branch` es: each a composition prompt in conventional-cell
counts plus the space groups that can realize exactly those counts within ``n_max``
(DESIGN section 6: a primitive-cell composition is multiplied by the centring factor of the
candidate space group; a reduced formula means any number of formula units).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from ..grammar import Grammar, GrammarState, Phase, min_sites
from ..symmetry import space_group
from ..tokenizer import COMP, END_COMP, count_token, wyckoff_token

CENTERING_FACTORS = (1, 2, 3, 4)  # P; A, B, C, I; R (hexagonal axes); F
MAX_ATOM_TARGETS = 500  # --atoms ranges: every count is checked per decoding step


@dataclass(frozen=True)
class Constraint:
    """What a sampled crystal must satisfy beyond the grammar; ``None`` means unrestricted."""

    space_groups: frozenset[int] | None = None
    elements: frozenset[str] | None = None
    site_elements: tuple[tuple[int, frozenset[str]], ...] = ()
    """(site index, allowed elements) pairs; site 0 is the first site in the stream."""
    atoms: frozenset[int] | None = None
    """Allowed numbers of atoms in the conventional cell (the sum of the sites' multiplicities)."""

    def __post_init__(self):
        object.__setattr__(self, "atoms", atom_counts(self.atoms))  # an int or any iterable of counts
        if self.atoms is not None:
            if not self.atoms or any(int(n) < 1 for n in self.atoms):
                raise ValueError(f"atom counts must be a non-empty set of whole numbers >= 1, got {sorted(self.atoms)}")
            if len(self.atoms) > MAX_ATOM_TARGETS:
                raise ValueError(f"at most {MAX_ATOM_TARGETS} atom counts at once, got {len(self.atoms)}")
        if self.space_groups is not None:
            bad = sorted(n for n in self.space_groups if not 1 <= int(n) <= 230)
            if bad or not self.space_groups:
                raise ValueError(f"space groups must be a non-empty set of numbers 1..230, got {sorted(self.space_groups)}")


@dataclass
class ConstraintMasks:
    """A :class:`Constraint` compiled against a grammar's vocabulary (shared by many particles)."""

    sg: np.ndarray | None  # (V,) bool or None
    elements: np.ndarray | None  # (V,) bool or None
    sites: dict[int, np.ndarray] = field(default_factory=dict)
    atoms: tuple[int, ...] | None = None  # allowed conventional-cell atom counts, ascending
    grammar: Grammar | None = field(default=None, repr=False, compare=False)

    @classmethod
    def compile(cls, constraint: Constraint, grammar: Grammar) -> ConstraintMasks:
        V = grammar.V
        sg = None
        if constraint.space_groups is not None:
            sg = np.zeros(V, dtype=bool)
            sg[grammar.sg_ids[[int(n) - 1 for n in constraint.space_groups]]] = True
        elements = None if constraint.elements is None else _element_mask(constraint.elements, grammar)
        sites = {int(i): _element_mask(els, grammar) for i, els in constraint.site_elements}
        atoms = None
        if constraint.atoms is not None:
            atoms = tuple(sorted(int(n) for n in constraint.atoms))
            feasible = [n for n in range(1, 231) if any(min_sites(n, 0, (a,)) <= grammar.n_max for a in atoms)]
            if not feasible:
                raise ValueError(f"no space group holds {_atoms_text(atoms)} atoms in at most {grammar.n_max} sites")
            by_atoms = np.zeros(V, dtype=bool)
            by_atoms[grammar.sg_ids[[n - 1 for n in feasible]]] = True
            sg = by_atoms if sg is None else sg & by_atoms
            if not sg.any():
                raise ValueError(f"none of the space groups asked for holds {_atoms_text(atoms)} atoms")
        return cls(sg, elements, sites, atoms, grammar if atoms is not None else None)

    def apply(self, mask: np.ndarray, state: GrammarState) -> np.ndarray:
        """``mask`` (V,) narrowed by the constraint in ``state`` (a new array when narrowed)."""
        if state.phase in (Phase.SPACE_GROUP, Phase.AFTER_BOS) and self.sg is not None:
            return mask & self.sg
        if state.phase == Phase.SITE and self.atoms is not None:
            return self._atom_sites(mask, state)
        if state.phase == Phase.ELEMENT:
            site = self.sites.get(state.n_sites)
            if site is not None:
                mask = mask & site
            if self.elements is not None:
                mask = mask & self.elements
        return mask


    def _atom_sites(self, mask: np.ndarray, state: GrammarState) -> np.ndarray:
        """At a site choice: [STOP] only at an allowed atom count; a Wyckoff letter only when some
        allowed count stays reachable after it (:func:`min_sites` with the remaining atoms as one count)."""
        grammar = self.grammar
        mask = mask.copy()
        mask[grammar.stop] = mask[grammar.stop] and state.atoms in self.atoms
        budget = grammar.n_max - state.n_sites - 1
        for wp in space_group(state.sg).wyckoff[state.start:]:
            tid = grammar.tokenizer.id(wyckoff_token(wp.letter))
            if not mask[tid]:
                continue
            after = state.atoms + wp.multiplicity
            start = wp.index + (1 if wp.dof == 0 else 0)
            mask[tid] = any(a == after or (a > after and min_sites(state.sg, start, (a - after,)) <= budget)
                            for a in self.atoms)
        return mask


def atom_counts(atoms) -> frozenset[int] | None:
    """Allowed atom counts as a frozenset: from None, one int, or any iterable of ints."""
    if atoms is None:
        return None
    return frozenset([int(atoms)] if isinstance(atoms, (int, np.integer)) else map(int, atoms))


def _atoms_text(atoms) -> str:
    return str(atoms[0]) if len(atoms) == 1 else f"{atoms[0]}-{atoms[-1]}"


def parse_atoms(text: str) -> frozenset[int]:
    """``--atoms``: "N" or "N-M" (inclusive) or "N,M,..." -> the set of allowed atom counts."""
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"--atoms {text!r}: expected N, N-M or N,M,... (atoms in the conventional cell)") from None
        if a < 1 or b < a:
            raise ValueError(f"--atoms {text!r}: counts must be >= 1 and ranges ascending")
        out.update(range(a, b + 1))
        if len(out) > MAX_ATOM_TARGETS:
            raise ValueError(f"--atoms {text!r}: at most {MAX_ATOM_TARGETS} counts at once")
    if not out:
        raise ValueError(f"--atoms {text!r}: no count given")
    return frozenset(out)


def _element_mask(symbols, grammar: Grammar) -> np.ndarray:
    vocab = grammar.tokenizer.vocab
    known = {vocab[i] for i in grammar.element_ids}
    unknown = sorted(set(symbols) - known)
    if unknown:
        raise ValueError(f"unknown element(s) {unknown}; the model knows H..Lr")
    if not symbols:
        raise ValueError("an element allow-list is empty")
    mask = np.zeros(grammar.V, dtype=bool)
    mask[[grammar.tokenizer.id(s) for s in symbols]] = True
    return mask


# ---------------------------------------------------------------------- compositions
def parse_composition(composition) -> dict[str, int]:
    """Element -> integer count from "SrTiO3", "Li2 Mn1 O3", a dict, or a pymatgen Composition."""
    from pymatgen.core import Composition

    if isinstance(composition, dict):
        items = dict(composition)
    else:
        if isinstance(composition, str):
            # pymatgen drops elements written with a zero count ("NaCl0" would become pure Na)
            for el, amt in re.findall(r"([A-Z][a-z]?)\s*([0-9]*\.?[0-9]*)", composition):
                if amt and float(amt) == 0:
                    raise ValueError(f"composition {composition!r}: {el} count {amt} is not a positive integer")
        try:
            items = {getattr(el, "symbol", str(el)): amt for el, amt in Composition(composition).items()}
        except (ValueError, KeyError) as err:
            raise ValueError(f"cannot read composition {composition!r}: {err}") from None
    out = {}
    for el, amt in items.items():
        n = float(amt)
        if n <= 0 or abs(n - round(n)) > 1e-6:
            raise ValueError(f"composition {composition!r}: {el} count {amt} is not a positive integer")
        out[str(el)] = int(round(n))
    if not out:
        raise ValueError(f"composition {composition!r} is empty")
    return out


@dataclass(frozen=True)
class Branch:
    """One composition prompt (conventional-cell counts, elements by atomic number) and its space groups."""

    counts: tuple[tuple[str, int], ...]
    space_groups: frozenset[int]
    formula_units: int = 1

    @property
    def formula(self) -> str:
        return "".join(f"{el}{n}" for el, n in self.counts)

    def prompt_ids(self, grammar: Grammar) -> list[int]:
        tok = grammar.tokenizer
        ids = [grammar.bos, tok.id(COMP)]
        for el, n in self.counts:
            ids += [tok.id(el), tok.id(count_token(n))]
        return ids + [tok.id(END_COMP)]


# Formula units Z per conventional cell (gcd of the element counts) in the default model's training data,
# mp_20 train (10,527) + mpts_52 train (11,585): how often each Z occurs. Z = 4 (face-centred cells)
# and 2 dominate; 5, 7 and Z > 8 are rare. The prior of a reduced-formula CSP over Z (see branch_weights).
Z_COUNTS = {1: 2497, 2: 7197, 3: 1176, 4: 9119, 5: 8, 6: 521, 7: 1, 8: 1175, 9: 52, 10: 12, 12: 92, 14: 1,
            15: 3, 16: 175, 18: 24, 20: 8, 24: 18, 27: 1, 28: 3, 30: 1, 32: 14, 36: 2, 40: 1, 48: 1}


def branch_weights(branches: list[Branch]) -> np.ndarray:
    """Prior probability of each branch: by its formula units Z, as often as Z occurs in the training data.

    p(X | reduced formula) = sum_Z p(Z) p(X | prompt_Z): particles are assigned to branches in
    proportion to p(Z) (add-one smoothed over the branches offered), not evenly, so a formula with
    16 feasible Z does not spend most of its particles on cells nearly no crystal has.
    """
    counts = np.array([Z_COUNTS.get(b.formula_units, 0) + 1.0 for b in branches])
    return counts / counts.sum()


def assign_branches(branches: list[Branch], n: int, weights: np.ndarray | None = None) -> list[Branch]:
    """``n`` particles' branches, stratified by ``weights`` (default even): particle i takes the branch
    whose cumulative weight first exceeds (i + 1/2) / n, so every branch gets its share to within one."""
    if weights is None:
        return [branches[i % len(branches)] for i in range(n)]
    edges = np.cumsum(weights)
    pick = np.minimum(np.searchsorted(edges, (np.arange(n) + 0.5) / n, side="right"), len(branches) - 1)
    return [branches[i] for i in pick]


def composition_branches(composition, grammar: Grammar, cell: str = "reduced", formula_units=None,
                         max_atoms: int = 80, space_groups=None) -> list[Branch]:
    """The prompts (and their feasible space groups) that realize ``composition``.

    ``cell``: "reduced" (any number of formula units Z: conventional counts Z * reduced
    formula, Z from ``formula_units`` or every Z with at most ``max_atoms`` atoms),
    "primitive" (the counts of a primitive cell: conventional counts = counts * centring factor
    of the space group), or "conventional" (exactly these counts in the conventional cell).
    Raises ValueError naming the composition when no space group can realize it within n_max.
    """
    from ..elements import atomic_number

    counts = parse_composition(composition)
    formula_units = None if formula_units is None else list(formula_units)  # any iterable, read once
    space_groups = None if space_groups is None else list(space_groups)
    known = {grammar.tokenizer.vocab[i] for i in grammar.element_ids}
    unknown = sorted(set(counts) - known)
    if unknown:
        raise ValueError(f"composition {composition!r}: unknown element(s) {unknown}")
    order = sorted(counts, key=atomic_number)
    base = [counts[el] for el in order]
    allowed_sgs = set(range(1, 231)) if space_groups is None else {int(n) for n in space_groups}
    if not (isinstance(max_atoms, int) and max_atoms >= 1):
        raise ValueError(f"max_atoms must be an integer >= 1, got {max_atoms!r}")
    if formula_units is not None and not all(isinstance(z, int) and z >= 1 for z in formula_units):
        raise ValueError(f"formula units must be integers >= 1, got {list(formula_units)}")
    if cell == "reduced":
        g = reduce(math.gcd, base)
        base = [c // g for c in base]
        if not formula_units and sum(base) > max_atoms:
            raise ValueError(f"composition {composition!r}: one formula unit has {sum(base)} atoms, more than "
                             f"max_atoms={max_atoms} (--max-atoms)")
        zs = list(formula_units) if formula_units else list(range(1, max_atoms // sum(base) + 1))
        multiples = [(z, z, None) for z in zs]
    elif cell == "primitive":
        multiples = [(f, 1, f) for f in CENTERING_FACTORS]
    elif cell == "conventional":
        multiples = [(1, 1, None)]
    else:
        raise ValueError(f"cell must be 'reduced', 'primitive' or 'conventional', got {cell!r}")
    branches = []
    for factor, z, centering in multiples:
        conv = tuple(c * factor for c in base)
        if max(conv) > grammar.tokenizer.max_count:
            continue
        sgs = frozenset(n for n in allowed_sgs
                        if (centering is None or space_group(n).centering_factor == centering)
                        and min_sites(n, 0, tuple(sorted(conv))) <= grammar.n_max)
        if sgs:
            branches.append(Branch(tuple(zip(order, conv)), sgs, z))
    if not branches:
        where = "" if space_groups is None else f" in space group(s) {sorted(allowed_sgs)}"
        raise ValueError(f"composition {composition!r} ({cell} cell) cannot be realized by any space group and "
                         f"Wyckoff combination{where} within n_max={grammar.n_max} sites"
                         + (f" and {max_atoms} atoms" if cell == "reduced" and not formula_units else ""))
    return branches
