"""Writing samples: one CIF per crystal plus ``samples.json``, all or nothing.

The folder is assembled under a temporary sibling and renamed into place at the end, so an
interrupted run leaves either the previous folder or the complete new one, never a mix. An
existing non-empty folder is replaced only with ``overwrite``.
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np

from ..atomic import assembled, check_output_folder
from ..samples_file import read_samples_file, write_samples_lines
from ..validity import MIN_DISTANCE, structure_validity

CONTACT_RATIO = 0.7  # x (sum of covalent radii): closer atoms are flagged as an implausible contact
FILTERS = ("valid", "contacts", "charge")  # --filter: structurally valid, plausible contacts, charge-balanced


check_output_dir = check_output_folder  # ``out`` checked and claimed for writing


def structure_checks(crystal) -> tuple[object | None, dict]:
    """(pymatgen Structure or None, flags) of a crystal as written.

    ``valid_structure``: the benchmark's rule (all distances >= 0.5 Å, volume >= 0.1 Å^3).
    ``contact_ratio``: the smallest distance over the sum of the two atoms' covalent radii;
    ``plausible_contacts``: it is at least :data:`CONTACT_RATIO` (what a chemist would accept).
    ``charge_balanced``: SMACT finds neutral oxidation states passing the electronegativity test
    (``None`` when smact is not installed).
    """
    flags = {"built": False, "valid_structure": False, "min_distance": None, "contact_ratio": None,
             "plausible_contacts": False, "charge_balanced": None}
    if crystal is None:
        return None, flags
    try:
        structure = crystal.to_structure()
    except (ValueError, ArithmeticError) as err:
        flags["error"] = f"structure: {err}"
        return None, flags
    flags["built"] = True
    dmin, ratio = contact_stats(structure)
    flags["min_distance"] = round(dmin, 4)
    flags["contact_ratio"] = round(ratio, 3)
    flags["valid_structure"] = structure_validity(structure)
    flags["plausible_contacts"] = bool(ratio >= CONTACT_RATIO and flags["valid_structure"])
    flags["charge_balanced"] = charge_balanced(structure.composition.reduced_formula)
    return structure, flags


def contact_stats(structure) -> tuple[float, float]:
    """(closest distance in Å, closest distance over the sum of the two atoms' covalent radii).

    Pairs use the minimum image; an atom and its own image count at the shortest lattice vector.
    """
    radii = np.array([_covalent_radius(site.specie.symbol) for site in structure])
    shortest_period = float(min(structure.lattice.get_niggli_reduced_lattice().abc))  # the shortest lattice vector
    self_ratio = shortest_period / (2 * float(radii.max()))
    if len(structure) == 1:
        return shortest_period, self_ratio
    d = structure.distance_matrix
    iu = np.triu_indices(len(structure), 1)
    dmin = float(min(np.min(d[iu]), shortest_period))
    return dmin, float(min(np.min(d[iu] / (radii[iu[0]] + radii[iu[1]])), self_ratio))


def has_plausible_contacts(crystal) -> bool:
    """The crystal builds, its volume is positive and no two atoms are closer than
    :data:`CONTACT_RATIO` x the sum of their covalent radii (no charge-balance work)."""
    try:
        structure = crystal.to_structure()
    except (ValueError, ArithmeticError):
        return False
    return structure_validity(structure) and contact_stats(structure)[1] >= CONTACT_RATIO


@functools.lru_cache(maxsize=None)
def _covalent_radius(symbol: str) -> float:
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core import Element

    r = CovalentRadius.radius.get(symbol)
    if r is None:  # heavy elements pymatgen's table lacks: its atomic radius is close enough for a flag
        r = Element(symbol).atomic_radius or 1.5
    return float(r)


@functools.lru_cache(maxsize=4096)
def charge_balanced(formula: str) -> bool | None:
    """SMACT charge neutrality + Pauling test of a reduced formula; ``None`` without smact."""
    try:
        import smact  # noqa: F401
    except ImportError:
        return None
    from pymatgen.core import Composition

    from ..validity import smact_validity

    return bool(smact_validity(Composition(formula)))


def flag_line(counts: dict) -> str:
    """What a person should know about the written crystals (the benchmark's 0.5 Å rule is not enough)."""
    built = counts["written"] + counts.get("filtered", 0)
    parts = [f"{counts['invalid_structure']} with atoms closer than {MIN_DISTANCE} Å",
             f"{counts['implausible_contacts']} with implausible contacts (< {CONTACT_RATIO} x covalent radii)"]
    if counts["charge_not_checked"]:
        parts.append("charge balance not checked (pip install smact)")
    else:
        parts.append(f"{counts['not_charge_balanced']} not charge-balanced (SMACT)")
    line = f"checks on {built} built: " + ", ".join(parts)
    if counts.get("filtered"):
        line += f"; {counts['filtered']} filtered out (listed in samples.json)"
    elif counts["implausible_contacts"] or counts["not_charge_balanced"]:
        line += "; --filter contacts,charge leaves them out"
    return line


def check_filters(filters) -> tuple[str, ...]:
    """``--filter`` values, known ones only (a ValueError naming the others)."""
    unknown = sorted(set(filters or ()) - set(FILTERS))
    if unknown:
        raise ValueError(f"--filter {','.join(unknown)}: unknown; choose from {', '.join(FILTERS)}")
    return tuple(filters or ())


def filter_reason(flags: dict, filters) -> str | None:
    """Why ``--filter`` drops a sample with these flags, or None to keep it."""
    if "valid" in filters and not flags["valid_structure"]:
        return f"filtered: atoms closer than {MIN_DISTANCE} Å"
    if "contacts" in filters and not flags["plausible_contacts"]:
        return f"filtered: implausible contact ({flags['contact_ratio']} x the covalent radii)"
    if "charge" in filters and flags["charge_balanced"] is False:
        return "filtered: not charge-balanced (SMACT)"
    return None


def write_samples(samples, out, overwrite: bool = False, names: list[str] | None = None,
                  extra: list[dict] | None = None, meta: dict | None = None, p1: bool = False,
                  formats=None, filters=()) -> dict:
    """Write ``samples`` (:class:`~crystalformer.sampling.api.Sample`) into folder ``out``.

    ``names``: file stems (default ``sample_00000`` ...); ``extra``: per-sample fields added to
    ``samples.json`` (e.g. material_id and rank for CSP). Samples without a crystal are listed
    with their error and get no CIF. Each CIF carries the crystal's own space group, operations
    and Wyckoff sites (:func:`crystalformer.cif.crystal_cif`); ``p1`` writes every atom in P1.
    ``formats``: any of cif (default), poscar, extxyz (:mod:`crystalformer.formats`), one file per
    format and crystal. ``filters``: any of :data:`FILTERS`; a sample that fails one gets no file
    and its row says why (it is counted, never silently dropped). Returns counts by outcome.
    """
    with SampleWriter(out, overwrite, meta, p1, formats, filters) as writer:
        writer.add(samples, names, extra)
    return writer.counts


class SampleWriter:
    """Writes an output folder in parts, all or nothing: ``with SampleWriter(out) as w: w.add(batch) ...``.

    CIFs go into a temporary sibling folder as each part arrives, and their ``samples.json`` rows
    into a line file beside them, so memory stays bounded by one part whatever the total. On a
    clean exit ``samples.json`` is assembled and the folder renamed into place; on any failure
    (an exception, Ctrl-C, SIGTERM) the temporary folder is removed. ``meta`` may be updated
    before the block ends (e.g. with the wall time).
    """

    ROWS = ".rows.jsonl"

    def __init__(self, out, overwrite: bool = False, meta: dict | None = None, p1: bool = False, formats=None,
                 filters=()):
        from ..formats import check_formats

        self.formats = check_formats(formats)
        self.filters = check_filters(filters)
        self.out = check_output_dir(out, overwrite)
        self.meta, self.p1 = dict(meta or {}), p1
        self.counts = {"written": 0, "not_decoded": 0, "not_built": 0, "invalid_structure": 0,
                       "implausible_contacts": 0, "not_charge_balanced": 0, "charge_not_checked": 0, "filtered": 0}
        self.n = 0
        self._names: set[str] = set()

    def __enter__(self) -> SampleWriter:
        self._context = assembled(self.out)
        self.tmp = self._context.__enter__()
        self._rows = open(self.tmp / self.ROWS, "w", encoding="utf-8")
        return self

    def add(self, samples, names: list[str] | None = None, extra: list[dict] | None = None) -> None:
        """Write one part: a file per built crystal and format, a row per sample (numbered on from earlier parts)."""
        names = names or [f"sample_{self.n + i:05d}" for i in range(len(samples))]
        if len(names) != len(samples) or self._names.intersection(names) or len(set(names)) != len(names):
            raise ValueError("names must be unique, one per sample")
        if extra is not None and len(extra) != len(samples):
            raise ValueError("extra needs one mapping per sample")
        self._names.update(names)
        for k, (s, name) in enumerate(zip(samples, names)):
            structure, flags = structure_checks(s.crystal)
            row = {"index": self.n, "file": None, **s.summary(), **flags, **(extra[k] if extra else {})}
            if s.crystal is None:
                self.counts["not_decoded"] += 1
            elif structure is None:
                self.counts["not_built"] += 1
            else:
                self.counts["invalid_structure"] += int(not flags["valid_structure"])
                self.counts["implausible_contacts"] += int(not flags["plausible_contacts"])
                self.counts["not_charge_balanced"] += int(flags["charge_balanced"] is False)
                self.counts["charge_not_checked"] += int(flags["charge_balanced"] is None)
                reason = filter_reason(flags, self.filters)
                if reason is not None:
                    row["filtered"] = reason
                    self.counts["filtered"] += 1
                else:
                    files = [self._write(s.crystal, structure, name, fmt) for fmt in self.formats]
                    row["file"] = files[0]
                    if len(files) > 1:
                        row["files"] = files
                    self.counts["written"] += 1
            self._rows.write(json.dumps(row) + "\n")
            self.n += 1

    def _write(self, crystal, structure, name: str, fmt: str) -> str:
        from ..cif import crystal_cif
        from ..formats import FORMATS, extxyz_text, poscar_text

        if fmt == "cif":
            text = crystal_cif(crystal, name, p1=self.p1)
        elif fmt == "poscar":
            text = poscar_text(structure, name)
        else:
            text = extxyz_text(structure, name)
        file = f"{name}{FORMATS[fmt]}"
        (self.tmp / file).write_text(text, encoding="utf-8")
        return file

    def _finish(self) -> None:
        self._rows.close()
        rows_path = self.tmp / self.ROWS
        with open(rows_path, encoding="utf-8") as rows:
            write_samples_lines(self.tmp, self.meta, self.counts, rows)
        rows_path.unlink()

    def __exit__(self, kind, error, trace) -> bool:
        try:
            if kind is None:
                self._finish()
            else:
                self._rows.close()
        except BaseException:
            self._context.__exit__(*sys.exc_info())
            raise
        return bool(self._context.__exit__(kind, error, trace))


def read_samples(path) -> list[dict]:
    """The per-sample rows of a ``samples.json`` (or of the one inside a folder)."""
    return read_samples_file(path).rows
