"""CIFs written straight from Crystal: readers recover the same structure and the generated space group."""

from __future__ import annotations

import io
import warnings

import pytest

from crystalformer.cif import cell_volume, crystal_cif


@pytest.fixture(scope="module")
def crystals(fixture_crystals):
    return [c for _, c in fixture_crystals]


def _pymatgen(text):
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser(io.StringIO(text)).parse_structures(primitive=False)[0]


@pytest.mark.parametrize("p1", [False, True])
def test_pymatgen_and_ase_read_the_same_structure_with_the_same_symmetry(crystals, p1):
    import ase.io
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    matcher = StructureMatcher(primitive_cell=False, stol=0.05, ltol=0.02, angle_tol=1, scale=False)
    groups = set()
    for i, crystal in enumerate(crystals):
        expanded = crystal.to_structure()  # the oracle: orbits expanded with the tables, no CIF involved
        text = crystal_cif(crystal, f"c{i}", p1=p1)
        read = _pymatgen(text)
        atoms = ase.io.read(io.StringIO(text), format="cif")
        assert len(read) == len(expanded) == len(atoms), (i, crystal)
        assert matcher.fit(read, expanded), (i, crystal)
        from pymatgen.io.ase import AseAtomsAdaptor

        assert matcher.fit(AseAtomsAdaptor.get_structure(atoms), expanded), (i, crystal)
        # spglib finds on the file what it finds on the expanded crystal (and the written group)
        found = SpacegroupAnalyzer(read, symprec=0.01).get_space_group_number()
        assert found == SpacegroupAnalyzer(expanded, symprec=0.01).get_space_group_number(), (i, crystal)
        groups.add(crystal.space_group)
    assert len(groups) >= 10  # many groups, settings and centrings exercised


def test_the_file_states_the_generated_group_its_operations_and_wyckoff_sites(crystals):
    from crystalformer.symmetry import space_group

    for crystal in crystals[:20]:
        text = crystal_cif(crystal)
        sg = space_group(crystal.space_group)
        assert f"_space_group_IT_number   {sg.number}" in text and f"'{sg.symbol}'" in text
        assert text.count("\n ") - text.count("\n  ") >= sg.order  # one loop row per operation (and the headers)
        rows = [line.split() for line in text.splitlines() if line.startswith("  ")]
        assert len(rows) == len(crystal.sites)
        for row, site in zip(rows, crystal.sites):
            assert row[0] == site.element and row[3] == site.letter
            assert int(row[2]) == sg.position(site.letter).multiplicity


def test_cell_volume_matches_pymatgen(crystals):
    for crystal in crystals[:30]:
        assert cell_volume(crystal.lattice) == pytest.approx(crystal.to_structure().volume, rel=1e-9)


def test_sample_folders_carry_the_generated_group_and_p1_on_request(tmp_path):
    import json

    from crystalformer.cli import main

    assert main(["sample", "--n", "6", "--out", str(tmp_path / "s"), "--quiet", "--seed", "3"]) == 0
    rows = json.loads((tmp_path / "s" / "samples.json").read_text())["samples"]
    for row in rows:
        if row["file"]:
            text = (tmp_path / "s" / row["file"]).read_text()
            assert f"_space_group_IT_number   {row['space_group']}\n" in text
    assert main(["sample", "--n", "3", "--out", str(tmp_path / "p"), "--quiet", "--p1"]) == 0
    text = next((tmp_path / "p").glob("*.cif")).read_text()
    assert "_space_group_IT_number   1\n" in text
