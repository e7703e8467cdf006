"""Output formats (CIF, POSCAR, extended XYZ), the checks a person is shown, and --filter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from crystalformer import Crystal
from crystalformer.cli import main
from crystalformer.sampling.api import Sample
from crystalformer.sampling.output import CONTACT_RATIO, structure_checks, write_samples


def _rock_salt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _spinel() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.08), ["Mg", "Al", "O"],
                                     [[0.125, 0.125, 0.125], [0.5, 0.5, 0.5], [0.263, 0.263, 0.263]])


def test_every_format_reads_back_as_the_same_crystal(tmp_path):
    from ase.io import read as ase_read

    from crystalformer.formats import read_extxyz
    from crystalformer.io import to_structure

    crystals = [Crystal.from_structure(_rock_salt()), Crystal.from_structure(_spinel())]
    counts = write_samples([Sample(c, -1.0) for c in crystals], tmp_path / "out", formats=["cif", "poscar", "extxyz"])
    assert counts["written"] == 2
    rows = json.loads((tmp_path / "out" / "samples.json").read_text())["samples"]
    assert rows[0]["files"] == ["sample_00000.cif", "sample_00000.vasp", "sample_00000.extxyz"]
    matcher = StructureMatcher()
    for crystal, row in zip(crystals, rows):
        expected = crystal.to_structure()
        cif, poscar, xyz = (tmp_path / "out" / f for f in row["files"])
        assert matcher.fit(expected, Structure.from_file(poscar))  # pymatgen's own POSCAR reader
        assert matcher.fit(expected, to_structure(xyz))
        (frame,) = read_extxyz(xyz)
        atoms = ase_read(xyz, format="extxyz")  # an independent reader
        assert np.allclose(atoms.cell.array, expected.lattice.matrix, atol=1e-6)
        assert list(atoms.get_chemical_symbols()) == [s.specie.symbol for s in frame]
        assert np.allclose(atoms.positions, frame.cart_coords, atol=1e-6)


def test_contact_ratio_is_the_closest_pair_over_its_covalent_radii():
    from crystalformer.sampling.output import _covalent_radius

    _, flags = structure_checks(Crystal.from_structure(_rock_salt()))
    expected = (5.64 / 2) / (_covalent_radius("Na") + _covalent_radius("Cl"))  # Na-Cl at a/2
    assert flags["contact_ratio"] == pytest.approx(expected, abs=1e-3)
    assert flags["plausible_contacts"] and flags["valid_structure"] and flags["charge_balanced"] is True
    squeezed = _rock_salt(2.0)  # Na-Cl 1.0 Å: valid by the 0.5 Å rule, implausible to a chemist
    _, flags = structure_checks(Crystal.from_structure(squeezed))
    assert flags["valid_structure"] and not flags["plausible_contacts"] and flags["contact_ratio"] < CONTACT_RATIO


def test_charge_balance_flag_follows_smact():
    na2cl = Structure(Lattice.cubic(5.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0.5]])
    _, flags = structure_checks(Crystal.from_structure(na2cl))
    assert flags["charge_balanced"] is False


def test_filter_writes_no_file_but_keeps_the_row_with_its_reason(tmp_path):
    samples = [Sample(Crystal.from_structure(_rock_salt()), -1.0), Sample(Crystal.from_structure(_rock_salt(2.0)), -2.0)]
    counts = write_samples(samples, tmp_path / "out", filters=["contacts"])
    rows = json.loads((tmp_path / "out" / "samples.json").read_text())["samples"]
    assert counts["written"] == 1 and counts["filtered"] == 1 and counts["implausible_contacts"] == 1
    assert rows[0]["file"] == "sample_00000.cif" and rows[1]["file"] is None
    assert rows[1]["filtered"].startswith("filtered: implausible contact")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sample_00000.cif", "samples.json"]


def test_cli_format_and_filter_options(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--model", "perov_5", "--n", "3", "--format", "poscar", "--filter", "valid", "--out",
                 str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "crystals as poscar" in text and "implausible contacts" in text and text.rstrip().splitlines()[-1].startswith("next:")
    assert list(out.glob("*.vasp")) and not list(out.glob("*.cif"))
    from crystalformer.evaluation.loading import load_entries

    entries = load_entries(out)  # evaluation reads POSCAR outputs too
    assert entries and all(e.cif is None or e.cif.startswith("# generated using pymatgen") for e in entries)
    for bad, phrase in ((["--format", "pdb"], "--format pdb"), (["--filter", "pretty"], "--filter pretty")):
        assert main(["sample", "--n", "1", "--out", str(tmp_path / "x"), *bad, "--quiet"]) == 2
        assert phrase in capsys.readouterr().err
