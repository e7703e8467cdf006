"""Structure files other than CIF: VASP POSCAR and extended XYZ, written and read without ASE.

CIF stays the package's own format (it carries the generated symmetry); these are for codes
that read POSCAR (VASP and most DFT workflows) or extended XYZ (ASE, MACE, many ML potentials).
"""

from __future__ import annotations

from pathlib import Path

FORMATS = {"cif": ".cif", "poscar": ".vasp", "extxyz": ".extxyz"}


def check_formats(names) -> list[str]:
    """The requested formats, known and without repeats, in order (default: cif)."""
    names = list(dict.fromkeys(n.lower() for n in (names or ["cif"])))
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ValueError(f"--format {','.join(unknown)}: unknown; choose from {', '.join(FORMATS)}")
    return names


def poscar_text(structure, comment: str) -> str:
    """VASP 5 POSCAR (direct coordinates, species line) of a pymatgen Structure."""
    from pymatgen.io.vasp import Poscar

    return Poscar(structure, comment=comment.replace("\n", " ")).get_str(significant_figures=8)


def extxyz_text(structure, comment: str = "") -> str:
    """One extended-XYZ frame: Cartesian positions, the lattice and periodic boundaries."""
    lattice = " ".join(f"{x:.8f}" for row in structure.lattice.matrix for x in row)
    note = f' name="{comment}"' if comment and '"' not in comment else ""
    lines = [str(len(structure)),
             f'Lattice="{lattice}" Properties=species:S:1:pos:R:3 pbc="T T T"{note}']
    lines += [f"{site.specie.symbol} {x:.8f} {y:.8f} {z:.8f}" for site, (x, y, z) in
              zip(structure, structure.cart_coords)]
    return "\n".join(lines) + "\n"


def read_extxyz(path) -> list:
    """pymatgen Structures of every frame of an extended-XYZ file written as above (or by ASE with a lattice)."""
    import shlex

    import numpy as np
    from pymatgen.core import Lattice, Structure

    lines = Path(path).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i])
            header = dict(part.split("=", 1) for part in shlex.split(lines[i + 1]) if "=" in part)
            matrix = np.array([float(x) for x in header["Lattice"].split()]).reshape(3, 3)
            rows = [lines[i + 2 + k].split() for k in range(n)]
        except (ValueError, KeyError, IndexError) as err:
            raise ValueError(f"{path}: not an extended XYZ frame at line {i + 1} ({type(err).__name__})") from None
        species = [r[0] for r in rows]
        coords = np.array([[float(x) for x in r[1:4]] for r in rows])
        out.append(Structure(Lattice(matrix), species, coords, coords_are_cartesian=True))
        i += 2 + n
    return out
