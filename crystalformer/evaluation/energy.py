"""Optional stability metrics (the ``energy`` extra): CHGNet relaxation, energy per atom, energy above hull.

The hull is built from reference entries the user provides (pymatgen ``ComputedEntry`` objects
with total energies from the same CHGNet model); generated energies are compared on it.
"""

from __future__ import annotations

EXTRA_HINT = "pip install crystalformer[energy]"


def _require_chgnet():
    try:
        from chgnet.model import CHGNet, StructOptimizer
    except ImportError as err:
        raise ImportError(f"CHGNet is needed for energy metrics: {EXTRA_HINT} ({err})") from None
    return CHGNet, StructOptimizer


def relax(structures, steps: int = 500, fmax: float = 0.1) -> list[dict]:
    """Relax each structure with CHGNet; per structure the relaxed Structure and energy per atom (eV/atom)."""
    CHGNet, StructOptimizer = _require_chgnet()
    optimizer = StructOptimizer(model=CHGNet.load(), optimizer_class="FIRE")
    out = []
    for s in structures:
        res = optimizer.relax(s, fmax=fmax, steps=steps, verbose=False)
        final = res["final_structure"]
        e_per_atom = float(res["trajectory"].energies[-1]) / len(final)
        out.append({"structure": final, "energy_per_atom": e_per_atom})
    return out


def energy_above_hull(structures_with_energy, reference_entries) -> list[float]:
    """E_hull (eV/atom) of each (structure, energy_per_atom) on the hull of ``reference_entries``.

    Elements absent from the reference make the hull undefined for that structure: ValueError naming it.
    """
    _require_chgnet()
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.computed_entries import ComputedEntry

    pd = PhaseDiagram(list(reference_entries))
    known = set(pd.elements)
    out = []
    for s, e in structures_with_energy:
        missing = set(s.composition.elements) - known
        if missing:
            raise ValueError(f"{s.composition.reduced_formula}: reference entries lack {sorted(map(str, missing))}")
        entry = ComputedEntry(s.composition, e * len(s))
        out.append(float(pd.get_e_above_hull(entry, allow_negative=True)))
    return out
