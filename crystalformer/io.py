"""Reading crystals: CDVAE-format CSV files, CIF files and folders, pymatgen and ASE objects.

A :class:`Record` is one input structure as CIF text plus where it came from (file, row,
material id) and its numeric property columns, so that every skipped input can be reported
by file, row and material id, and every kept one keeps its properties.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MAX_INPUT_ATOMS, CrystalError

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")  # what pandas reads as CSV

# pymatgen's CIF parser reports every tidied coordinate as a UserWarning ("8 fractional
# coordinates rounded to ideal values ..."): one per structure in the CDVAE files. These
# notes are silenced while parsing; the ones of a CIF that fails are quoted in its error.
_CIF_WARNING_MODULE = r"pymatgen\.io\.cif"

# a CIF data block starts with "data_<name>" at the start of a line (CIF 1.1 section 2.2.7.1)
_DATA_BLOCK = re.compile(r"^data_(\S*)", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    """One input structure: its CIF text and provenance."""

    source: str  # file the record came from
    row: int  # 0-based row of a CSV (header excluded), or data-block index of a CIF file
    material_id: str  # the CSV's material_id (the row number when there is none), or the CIF's name
    cif: str
    properties: dict[str, float | int | bool] = field(default_factory=dict)  # numeric CSV columns of the row


def is_csv(path) -> bool:
    return str(path).lower().endswith(CSV_SUFFIXES)


def read_csv_records(path) -> Iterator[Record]:
    """Records of a CDVAE-format CSV: any CSV with a ``cif`` column.

    ``material_id`` is optional (the 0-based row number stands in for it). Numeric columns
    (float, int, bool) other than the unnamed index column become the record's properties;
    empty (and non-finite) cells are left out. Text columns (``formula``, ``elements``, ...) are not kept.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        hint = ""
        if "EOF inside string" in str(err):
            hint = ("; its CIF fields span many lines, so a file cut with head or split ends inside one: cut "
                    "whole rows (e.g. with pandas) or keep the file whole")
        raise ValueError(f"cannot read CSV file {path}: {err}{hint}") from None
    if df.empty:
        raise ValueError(f"{path} holds no rows (an empty CSV or a header only)")
    if "cif" not in df.columns:
        raise ValueError(f"{path} has no 'cif' column (columns: {list(df.columns)[:10]}); "
                         "expected the CDVAE CSV format: material_id, cif, property columns")
    numeric = [c for c in df.columns if c not in ("cif", "material_id") and not str(c).startswith("Unnamed")
               and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
    ids = df["material_id"].astype(str).tolist() if "material_id" in df.columns else [str(i) for i in range(len(df))]
    columns = {c: df[c].tolist() for c in numeric}  # native Python int / float / bool
    for i, (mid, cif) in enumerate(zip(ids, df["cif"].tolist())):
        props = {c: v for c, values in columns.items() if not _is_missing(v := values[i])}
        yield Record(str(path), i, mid, cif if isinstance(cif, str) else "", props)


def read_cif_records(path) -> Iterator[Record]:
    """Records of one CIF file or of every ``*.cif`` file in a folder (sorted by name, not recursive).

    A file with several data blocks yields one record per block (``row`` = block index,
    ``material_id`` = ``<file stem>:<block name>``); a single-block file is named by its stem.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".cif")
        if not files:
            raise FileNotFoundError(f"no *.cif files in folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"CIF file or folder not found: {path}")
    for f in files:
        blocks = split_cif_blocks(f.read_text(errors="replace"))
        if len(blocks) == 1:
            yield Record(str(f), 0, f.stem, blocks[0][1])
            continue
        for i, (name, text) in enumerate(blocks):
            yield Record(str(f), i, f"{f.stem}:{name or i}", text)


def split_cif_blocks(text: str) -> list[tuple[str, str]]:
    """(block name, block text) of each ``data_`` block; the whole text when there are fewer than two."""
    starts = list(_DATA_BLOCK.finditer(text))
    if len(starts) < 2:
        return [(starts[0].group(1) if starts else "", text)]
    ends = [m.start() for m in starts[1:]] + [len(text)]
    return [(m.group(1), text[m.start():end]) for m, end in zip(starts, ends)]


def read_records(path) -> Iterator[Record]:
    """Records of a CSV file (by suffix), a CIF file or a folder of CIF files."""
    return read_csv_records(path) if is_csv(path) else read_cif_records(path)


_NON_FINITE = re.compile(r"(?im)(?:^|\s)([+-]?(?:nan|inf(?:inity)?))(?=\s|$)")
MAX_CIF_LINES = 200_000  # whatever else a file holds (comments, reflections), this many lines is not a crystal


def _atom_site_rows(text: str) -> int:
    """Rows of the ``_atom_site_`` loops of a CIF text (all blocks), counted without parsing it."""
    rows, in_header, in_atoms = 0, False, False
    for line in text.splitlines():
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        low = word.lower()
        if low.startswith("loop_"):
            in_header, in_atoms = True, False
        elif low.startswith("_"):
            if in_header and low.startswith("_atom_site_") and not low.startswith("_atom_site_aniso"):
                in_atoms = True
            elif not in_header:
                in_atoms = False
        elif low.startswith("data_"):
            in_header = in_atoms = False
        else:
            in_header = False
            rows += in_atoms
    return rows


def structure_from_cif(text: str, name: str = "<cif>"):
    """Parse one CIF string into a pymatgen Structure.

    Raises ``CrystalError(reason="parse")`` naming ``name`` and quoting the parser's notes
    when the text holds no readable structure.
    """
    from pymatgen.core import Structure

    if not isinstance(text, str) or not text.strip():
        raise CrystalError("parse", f"{name}: empty CIF")
    lines = text.count("\n")
    rows = _atom_site_rows(text)
    if rows > MAX_INPUT_ATOMS:  # pymatgen's parser takes minutes on tens of thousands of atoms
        raise CrystalError("parse", f"{name}: {rows:,} atom sites, more than the {MAX_INPUT_ATOMS:,} this package "
                                    "analyses; refused before parsing")
    if lines > MAX_CIF_LINES:
        raise CrystalError("parse", f"{name}: {lines:,} lines, far more than any crystal this package "
                                    f"handles (at most {MAX_CIF_LINES:,}); refused before parsing")
    structure, error = None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", category=UserWarning, module=_CIF_WARNING_MODULE)
        try:
            structure = Structure.from_str(text, fmt="cif")
        except (ValueError, KeyError, IndexError, TypeError, AssertionError, ZeroDivisionError) as err:
            error = err
    _rewarn(caught)
    if error is not None:
        notes = "; ".join(dict.fromkeys(_cif_notes(caught)))
        bad = _NON_FINITE.search(text)
        if bad:  # the parser's own message ("cannot convert float NaN to integer") says less
            raise CrystalError("parse", f"{name}: the CIF holds a non-finite number ({bad.group(1)!r} on line "
                                        f"{text.count(chr(10), 0, bad.start()) + 1}); cells and coordinates must "
                                        "be finite")
        if "Singular matrix" in notes or "below threshold" in notes:
            raise CrystalError("parse", f"{name}: the cell is degenerate (a zero length or flat angles)")
        raise CrystalError("parse", f"{name}: unreadable CIF ({type(error).__name__}: {error})"
                                    + (f" [parser notes: {notes}]" if notes else ""))
    check_structure(structure, name, "parse")
    if np.linalg.det(structure.lattice.matrix) <= 0:  # a CIF cell from parameters is right-handed
        raise CrystalError("parse", f"{name}: cell lengths must be positive (the parsed cell is inverted)")
    return structure


def check_structure(structure, name: str = "<structure>", reason: str = "invalid"):
    """``structure`` itself, or ``CrystalError(reason)`` naming ``name`` when its cell or
    coordinates hold NaN or infinity or its volume is not positive: such numbers crash spglib
    (a segmentation fault), so they are stopped here, before any symmetry code sees them."""
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    if not (np.isfinite(matrix).all() and np.isfinite(frac).all()):
        raise CrystalError(reason, f"{name}: the cell or coordinates hold non-finite numbers (NaN or infinity)")
    volume = abs(float(np.linalg.det(matrix)))
    if not volume > 1e-6:
        raise CrystalError(reason, f"{name}: the cell is degenerate (volume {volume:.3g} Å^3)")
    return structure


def to_structure(obj):
    """A pymatgen Structure from a Structure, ASE Atoms, CIF text, or a path to a CIF / POSCAR / other file.

    A string that contains a newline is read as CIF text; any other string is a path.
    Unreadable inputs raise ``CrystalError(reason="parse")`` naming the input.
    """
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return check_structure(obj)
    if _is_ase_atoms(obj):
        from pymatgen.io.ase import AseAtomsAdaptor

        if not all(obj.pbc):
            raise CrystalError("parse", f"ASE Atoms {obj.get_chemical_formula()}: not periodic in all three "
                                        f"directions (pbc={list(map(bool, obj.pbc))}); a crystal needs pbc=True")
        return check_structure(AseAtomsAdaptor.get_structure(obj), f"ASE Atoms {obj.get_chemical_formula()}")
    if isinstance(obj, str) and "\n" in obj:
        return structure_from_cif(obj)
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"structure file not found: {path}")
        if path.suffix.lower() == ".cif":
            return structure_from_cif(path.read_text(errors="replace"), str(path))
        if path.suffix.lower() == ".extxyz":
            from .formats import read_extxyz

            try:
                frames = read_extxyz(path)
            except ValueError as err:
                raise CrystalError("parse", str(err)) from None
            if len(frames) != 1:
                raise CrystalError("parse", f"{path}: {len(frames)} frames; one structure per file is read here")
            return check_structure(frames[0], str(path), "parse")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"pymatgen\.io\.")
            try:
                return check_structure(Structure.from_file(path), str(path), "parse")
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise CrystalError("parse", f"{path}: unreadable structure file "
                                            f"({type(err).__name__}: {err})") from None
    raise TypeError(f"cannot make a structure from {type(obj).__name__}; expected a pymatgen Structure, "
                    "ASE Atoms, CIF text or a file path")


def _cif_notes(caught) -> list[str]:
    notes = [" ".join(str(w.message).split()) for w in caught if _from_cif_parser(w)]
    return [n.removeprefix("Issues encountered while parsing CIF: ") for n in notes]


def _from_cif_parser(w) -> bool:
    return issubclass(w.category, UserWarning) and Path(w.filename).as_posix().endswith("pymatgen/io/cif.py")


def _rewarn(caught) -> None:
    """Pass on the warnings recorded while parsing that are not the CIF parser's notes."""
    for w in caught:
        if not _from_cif_parser(w):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _is_ase_atoms(obj) -> bool:
    try:
        from ase import Atoms
    except ImportError:
        return False
    return isinstance(obj, Atoms)


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))
