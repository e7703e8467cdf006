"""Convex hull of formation energies from reference entries, and energy above it.

The hull energy at a composition x is the lowest energy per atom any mixture of reference
phases with that overall composition reaches: min sum_i l_i e_i over l >= 0 with
sum_i l_i c_i = x (c_i: the atomic fractions of entry i). That is a small linear program; its
value is the lower convex hull, with or without elemental references, and E_hull = e - hull(x).
A composition the references cannot form (an element none of them holds) has no hull: ``None``.

A :class:`ReferenceHull` is stored as a CSV table (formula, energy per atom, where it came
from). The table shipped for the default model is a hull of *our training data under the
potential*, not the Materials Project hull: see ``crystalformer physics build-hull``.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STABLE_CUTOFF = 0.08  # eV/atom: "stable" as in the WyFormer re-evaluation of DiffCSP, MatterGen, CrystalFormer
FIELDS = ("formula", "energy_per_atom", "material_id", "source", "relaxed")


def fractions(formula_or_composition) -> dict[str, float]:
    """{element: atomic fraction} of a formula string, pymatgen Composition or {element: amount}."""
    if isinstance(formula_or_composition, dict):
        amounts = {str(k): float(v) for k, v in formula_or_composition.items()}
    else:
        from pymatgen.core import Composition

        comp = formula_or_composition if hasattr(formula_or_composition, "get_el_amt_dict") else \
            Composition(str(formula_or_composition))
        amounts = {str(k): float(v) for k, v in comp.get_el_amt_dict().items()}
    amounts = {k: v for k, v in amounts.items() if v > 0}
    total = sum(amounts.values())
    if not amounts or not math.isfinite(total) or total <= 0:
        raise ValueError(f"{formula_or_composition!r}: not a composition")
    return {k: v / total for k, v in amounts.items()}


@dataclass(frozen=True)
class Entry:
    formula: str
    energy_per_atom: float  # eV/atom
    material_id: str = ""
    source: str = ""
    relaxed: bool = False


class ReferenceHull:
    """Lower convex hull of ``entries``; queries by composition."""

    def __init__(self, entries):
        entries = [e for e in entries if math.isfinite(e.energy_per_atom)]
        if not entries:
            raise ValueError("a hull needs at least one reference entry with a finite energy")
        self.entries = entries
        # the lowest entry per reduced composition is all the linear program ever needs
        best: dict[tuple, tuple[float, int]] = {}
        for i, e in enumerate(entries):
            key = tuple(sorted((k, round(v, 8)) for k, v in fractions(e.formula).items()))
            if key not in best or e.energy_per_atom < best[key][0]:
                best[key] = (e.energy_per_atom, i)
        self._by_system: dict[frozenset, list[tuple[dict, float, int]]] = {}
        for key, (energy, i) in best.items():
            frac = dict(key)
            self._by_system.setdefault(frozenset(frac), []).append((frac, energy, i))
        self.elements = frozenset().union(*self._by_system)

    def __len__(self) -> int:
        return len(self.entries)

    def _candidates(self, elements: frozenset):
        if len(elements) > 12:
            raise ValueError(f"{len(elements)} elements: too many for a hull query")
        for r in range(1, len(elements) + 1):
            for sub in itertools.combinations(sorted(elements), r):
                yield from self._by_system.get(frozenset(sub), ())

    def hull_energy(self, composition) -> float | None:
        """Lowest energy per atom the references reach at ``composition``; None if they cannot form it."""
        from scipy.optimize import linprog

        x = fractions(composition)
        elements = frozenset(x)
        if not elements <= self.elements:
            return None
        cands = list(self._candidates(elements))
        if not cands:
            return None
        order = sorted(elements)
        A = np.array([[c[0].get(el, 0.0) for c in cands] for el in order])
        b = np.array([x[el] for el in order])
        cost = np.array([c[1] for c in cands])
        res = linprog(cost, A_eq=A, b_eq=b, bounds=(0, None), method="highs")
        if res.status == 2:  # infeasible: no mixture of the references has this composition
            return None
        if res.status != 0:
            raise ValueError(f"hull of {''.join(f'{el}{x[el]:.3g}' for el in order)}: the linear program failed "
                             f"({res.message})")
        return float(res.fun)

    def e_above_hull(self, composition, energy_per_atom: float) -> float | None:
        """E_hull in eV/atom (negative: below the reference hull); None where the hull is undefined."""
        if not math.isfinite(energy_per_atom):
            return None
        h = self.hull_energy(composition)
        return None if h is None else float(energy_per_atom - h)

    def missing_elements(self, composition) -> list[str]:
        """Elements of ``composition`` no reference entry holds (why a hull is undefined)."""
        return sorted(set(fractions(composition)) - self.elements)

    def stable_entries(self, tol: float = 1e-6) -> list[Entry]:
        """The entries on the hull (the lowest per composition, within ``tol`` eV/atom of it)."""
        out = []
        for system in self._by_system.values():
            for frac, energy, i in system:
                e_hull = self.e_above_hull(frac, energy)
                if e_hull is not None and e_hull <= tol:
                    out.append(self.entries[i])
        return out

    # ------------------------------------------------------------------ files
    def save(self, path, entries=None) -> Path:
        """Write ``entries`` (default all) as a CSV table, atomically."""
        import io

        from ..atomic import atomic_write_text

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS)
        w.writeheader()
        for e in (self.entries if entries is None else entries):
            w.writerow({"formula": e.formula, "energy_per_atom": f"{e.energy_per_atom:.6f}",
                        "material_id": e.material_id, "source": e.source, "relaxed": int(e.relaxed)})
        path = Path(path)
        atomic_write_text(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path) -> ReferenceHull:
        return cls(read_entries(path))


def read_entries(path) -> list[Entry]:
    """Entries of a hull table; a malformed row is a ValueError naming the file and row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: hull table not found")
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"formula", "energy_per_atom"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a hull table needs the columns formula and energy_per_atom")
        for row_no, row in enumerate(reader, start=2):
            try:
                e = float(row["energy_per_atom"])
                fractions(row["formula"])
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path} row {row_no}: {err}") from None
            if not math.isfinite(e):
                raise ValueError(f"{path} row {row_no}: energy_per_atom is {row['energy_per_atom']}")
            out.append(Entry(row["formula"], e, row.get("material_id") or "", row.get("source") or "",
                             str(row.get("relaxed", "0")).strip() in ("1", "True", "true")))
    if not out:
        raise ValueError(f"{path}: no entries")
    return out
