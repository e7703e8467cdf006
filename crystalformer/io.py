"""Reading crystals: CDVAE-format CSV files, CIF files and folders, pymatgen and ASE objects.

A *record* is one input structure as text plus where it came from, so that every skipped
input can be reported by file, row and material id.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CrystalError


@dataclass(frozen=True)
class Record:
    """One input structure: its CIF text and provenance."""

    source: str  # file the record came from
    row: int  # row index in a CSV (0-based, header excluded); 0 for a CIF file
    material_id: str
    cif: str
    properties: dict[str, float] = field(default_factory=dict)  # numeric CSV columns


def read_csv_records(path) -> Iterator[Record]:
    """Records of a CDVAE-format CSV: a ``cif`` column; ``material_id`` and numeric columns are kept.

    Rows without a ``material_id`` column are named ``row<i>``.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    df = pd.read_csv(path)
    if "cif" not in df.columns:
        raise ValueError(f"{path} has no 'cif' column (columns: {list(df.columns)[:10]}); "
                         "expected the CDVAE CSV format")
    numeric = [c for c in df.columns if c not in ("cif", "material_id") and not str(c).startswith("Unnamed")
               and pd.api.types.is_numeric_dtype(df[c])]
    ids = df["material_id"].astype(str) if "material_id" in df.columns else [f"row{i}" for i in range(len(df))]
    for i, (mid, cif) in enumerate(zip(ids, df["cif"])):
        props = {c: float(df[c].iat[i]) for c in numeric if not _is_nan(df[c].iat[i])}
        yield Record(str(path), i, str(mid), cif if isinstance(cif, str) else "", props)


def read_cif_records(path) -> Iterator[Record]:
    """Records of one CIF file or of every ``*.cif`` file in a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.cif"))
        if not files:
            raise FileNotFoundError(f"no *.cif files in folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"CIF file or folder not found: {path}")
    for f in files:
        yield Record(str(f), 0, f.stem, f.read_text(errors="replace"))


def read_records(path) -> Iterator[Record]:
    """Records of a CSV file, a CIF file or a folder of CIF files, chosen by what ``path`` is."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv_records(path)
    return read_cif_records(path)


def structure_from_cif(text: str, name: str = "<cif>"):
    """Parse one CIF string into a pymatgen Structure; CrystalError(reason="parse") names the input."""
    from pymatgen.core import Structure

    if not text or not text.strip():
        raise CrystalError("parse", f"{name}: empty CIF")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fractional coordinates rounded to ideal values" and similar notes
        try:
            return Structure.from_str(text, fmt="cif")
        except (ValueError, KeyError, IndexError, TypeError, AssertionError, ZeroDivisionError) as err:
            raise CrystalError("parse", f"{name}: unreadable CIF ({type(err).__name__}: {err})") from None


def to_structure(obj):
    """A pymatgen Structure from a Structure, ASE Atoms, CIF text, or a path to a CIF / POSCAR file."""
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return obj
    if _is_ase_atoms(obj):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(obj)
    if isinstance(obj, (str, Path)):
        text = str(obj)
        if "\n" in text or text.lstrip().startswith("data_"):
            return structure_from_cif(text)
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"structure file not found: {path}")
        if path.suffix.lower() == ".cif":
            return structure_from_cif(path.read_text(errors="replace"), str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return Structure.from_file(path)
            except (ValueError, KeyError, IndexError) as err:
                raise CrystalError("parse", f"{path}: unreadable structure file ({err})") from None
    raise TypeError(f"cannot make a structure from {type(obj).__name__}; expected a pymatgen Structure, "
                    "ASE Atoms, CIF text or a file path")


def _is_ase_atoms(obj) -> bool:
    try:
        from ase import Atoms
    except ImportError:
        return False
    return isinstance(obj, Atoms)


def _is_nan(v) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True
