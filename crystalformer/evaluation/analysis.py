"""Per-structure analysis, the unit of parallel work: parse, validity, properties, space group, fingerprints.

Every step that fails on one structure is recorded under ``failures`` (step -> message) and the
structure carries on with what is known; nothing here raises on a bad structure.
"""

from __future__ import annotations

from dataclasses import dataclass

from .parallel import STRUCTURE_ERRORS


@dataclass(frozen=True)
class Entry:
    """One input crystal: a name, its CIF text (None when the generator produced nothing) and why not."""

    name: str
    cif: str | None
    error: str | None = None  # reason given by the producer when cif is None
    material_id: str | None = None
    rank: int | None = None


@dataclass(frozen=True)
class Options:
    fingerprints: bool = True  # CrystalNN + Magpie fingerprints (slow: ~0.05-0.5 s per structure)
    space_group: bool = True
    symprec: float = 0.1
    keep_structure: bool = True  # return the pymatgen Structure (needed for matching)
    reduce: bool = False  # also the Niggli + primitive cell StructureMatcher compares (uniqueness / novelty)


def analyze(job: tuple[Entry, Options]) -> dict:
    """Everything the metrics need about one crystal, as a dict (see module docstring)."""
    entry, opt = job
    out = {"name": entry.name, "material_id": entry.material_id, "rank": entry.rank, "parsed": False,
           "struct_valid": False, "comp_valid": False, "valid": False, "density": None, "n_elements": None,
           "n_atoms": None, "space_group": None, "struct_fp": None, "comp_fp": None, "structure": None,
           "reduced": None,
           "failures": {}}
    if entry.cif is None:
        out["failures"]["missing"] = entry.error or "no structure"
        return out
    structure = _parse(entry, out)
    if structure is None:
        return out
    out["parsed"] = True
    out["n_atoms"] = len(structure)
    _step(out, "structure_validity", lambda: out.update(struct_valid=_structure_valid(structure)))
    _step(out, "smact", lambda: out.update(comp_valid=_smact(structure)))
    _step(out, "properties", lambda: out.update(density=float(structure.density),
                                                n_elements=len(structure.composition.elements)))
    if opt.space_group:
        _step(out, "space_group", lambda: out.update(space_group=_sg(structure, opt.symprec)))
    out["valid"] = bool(out["struct_valid"] and out["comp_valid"])
    if opt.fingerprints:
        ok = _step(out, "fingerprint", lambda: out.update(struct_fp=_sfp(structure), comp_fp=_cfp(structure)))
        if not ok:  # as CDVAE: a crystal whose fingerprint cannot be built counts as invalid
            out.update(struct_fp=None, comp_fp=None, valid=False)
    if opt.keep_structure:
        out["structure"] = structure
    if opt.reduce:
        _step(out, "reduce", lambda: out.update(reduced=_reduce(structure)))
    return out


def _parse(entry: Entry, out: dict):
    import warnings

    from ..errors import CrystalError
    from ..io import structure_from_cif

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return structure_from_cif(entry.cif, entry.name)
    except (CrystalError, *STRUCTURE_ERRORS) as err:
        out["failures"]["parse"] = str(err)[:300]
        return None


def _step(out: dict, name: str, fn) -> bool:
    try:
        fn()
        return True
    except STRUCTURE_ERRORS as err:
        out["failures"][name] = f"{type(err).__name__}: {err}"[:300]
        return False


def _structure_valid(s) -> bool:
    from ..validity import structure_validity

    return structure_validity(s)


def _smact(s) -> bool:
    from ..validity import smact_validity

    return smact_validity(s)


def _sg(s, symprec: float) -> int:
    from .symmetry_stats import space_group_number

    return space_group_number(s, symprec=symprec)


def _reduce(s):
    from .uniqueness import reduce_for_matching

    return reduce_for_matching(s)


def _sfp(s):
    from .coverage import structure_fingerprint

    return structure_fingerprint(s)


def _cfp(s):
    from .coverage import composition_fingerprint

    return composition_fingerprint(s)


def analyze_all(entries, options: Options, workers: int = 1, progress: bool = True, desc: str = "analyze") -> list[dict]:
    from .parallel import pmap

    return pmap(analyze, [(e, options) for e in entries], workers=workers, desc=desc, progress=progress)
