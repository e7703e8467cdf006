"""Readers: CDVAE CSV records, CIF files and folders, structures from any supported object."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystalformer import Crystal, CrystalError
from crystalformer.io import (
    read_cif_records,
    read_csv_records,
    read_records,
    split_cif_blocks,
    structure_from_cif,
    to_structure,
)


@pytest.fixture(scope="module")
def nacl_cif(data_dir) -> str:
    return (data_dir / "cif" / "NaCl.cif").read_text()


# ---------------------------------------------------------------------- CSV
def test_csv_records_keep_ids_rows_and_numeric_properties(data_dir):
    path = data_dir / "mp20_sample.csv"
    df = pd.read_csv(path)
    records = list(read_csv_records(path))
    assert [r.material_id for r in records] == df["material_id"].astype(str).tolist()
    assert [r.row for r in records] == list(range(len(df)))
    assert all(r.source == str(path) and r.cif == cif for r, cif in zip(records, df["cif"]))
    props = records[0].properties
    assert set(props) == {"formation_energy_per_atom", "band_gap", "e_above_hull", "spacegroup.number"}
    assert props["band_gap"] == df["band_gap"].iat[0]
    assert isinstance(props["spacegroup.number"], int) and isinstance(props["band_gap"], float)


def test_csv_bool_and_int_columns_stay_native(data_dir):
    record = next(read_csv_records(data_dir / "mpts52_sample.csv"))
    assert isinstance(record.properties["theoretical"], bool)
    assert isinstance(record.properties["year"], int)


def test_csv_without_material_id_uses_row_number_and_skips_empty_cells(tmp_path, nacl_cif):
    path = tmp_path / "mine.csv"
    pd.DataFrame({"cif": [nacl_cif, nacl_cif], "energy": [1.5, None], "note": ["a", "b"]}).to_csv(path, index=False)
    records = list(read_csv_records(path))
    assert [r.material_id for r in records] == ["0", "1"]
    assert records[0].properties == {"energy": 1.5}
    assert records[1].properties == {}  # empty cell left out, text column never kept


def test_csv_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        list(read_csv_records(tmp_path / "nope.csv"))
    path = tmp_path / "nocif.csv"
    path.write_text("material_id,structure\nmp-1,xx\n")
    with pytest.raises(ValueError, match="no 'cif' column"):
        list(read_csv_records(path))


def test_csv_missing_cif_cell_becomes_empty_text(tmp_path, nacl_cif):
    path = tmp_path / "holes.csv"
    pd.DataFrame({"material_id": ["a", "b"], "cif": [nacl_cif, None]}).to_csv(path, index=False)
    assert [r.cif for r in read_csv_records(path)] == [nacl_cif, ""]


# ---------------------------------------------------------------------- CIF files and folders
def test_cif_folder_gives_one_record_per_file_sorted(data_dir):
    records = list(read_cif_records(data_dir / "cif"))
    assert [r.material_id for r in records] == ["CuAu_disordered", "NaCl", "broken"]
    assert all(r.row == 0 and r.properties == {} for r in records)
    assert [r.material_id for r in read_records(data_dir / "cif" / "NaCl.cif")] == ["NaCl"]


def test_multi_block_cif_file_gives_one_record_per_block(tmp_path, nacl_cif):
    other = nacl_cif.replace("data_NaCl", "data_second")
    path = tmp_path / "two.cif"
    path.write_text(nacl_cif + "\n" + other)
    records = list(read_cif_records(path))
    assert [(r.row, r.material_id) for r in records] == [(0, "two:NaCl"), (1, "two:second")]
    assert all(len(structure_from_cif(r.cif)) == 8 for r in records)
    assert len(split_cif_blocks(nacl_cif)) == 1


def test_cif_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.cif files"):
        list(read_cif_records(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing"):
        list(read_cif_records(tmp_path / "missing"))


# ---------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text", ["", "   \n", "garbage", "data_x\n_cell_length_a 3\n"])
def test_unreadable_cif_raises_parse_error_naming_the_input(text):
    with pytest.raises(CrystalError, match="row 7") as info:
        structure_from_cif(text, name="row 7")
    assert info.value.reason == "parse"


def test_broken_fixture_quotes_the_parser_notes(data_dir):
    with pytest.raises(CrystalError, match="broken.cif.*parser notes") as info:
        to_structure(data_dir / "cif" / "broken.cif")
    assert info.value.reason == "parse"


def test_rounded_coordinate_notes_are_silenced_locally(data_dir):
    cif = pd.read_csv(data_dir / "mp20_sample.csv")["cif"].iat[2]  # row 2 has coordinates pymatgen rounds
    with warnings.catch_warnings(record=True) as raw:  # the note exists without our filter ...
        warnings.simplefilter("always")
        Structure.from_str(cif, fmt="cif")
    assert any("rounded" in str(w.message) for w in raw)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:  # ... and does not escape structure_from_cif
        warnings.simplefilter("always")
        structure_from_cif(cif)
    assert caught == []
    assert warnings.filters == before  # nothing changed globally


def test_to_structure_accepts_every_supported_input(tmp_path, nacl_cif, data_dir):
    reference = structure_from_cif(nacl_cif)
    assert to_structure(reference) is reference
    path = data_dir / "cif" / "NaCl.cif"
    poscar = tmp_path / "POSCAR"
    reference.to(filename=str(poscar), fmt="poscar")
    for obj in (nacl_cif, path, str(path), poscar):
        s = to_structure(obj)
        assert s.composition.reduced_formula == "NaCl" and len(s) == 8
    crystal = Crystal.from_structure(reference)
    assert Crystal.from_structure(poscar).isclose(crystal)


def test_to_structure_from_ase_atoms():
    ase = pytest.importorskip("ase")
    s = Structure(Lattice.cubic(4.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    atoms = ase.Atoms("CsCl", cell=[4.0, 4.0, 4.0], scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], pbc=True)
    assert to_structure(atoms).matches(s)
    assert Crystal.from_structure(atoms) == Crystal.from_structure(s)


def test_to_structure_rejects_unknown_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.cif"):
        to_structure(tmp_path / "absent.cif")
    with pytest.raises(TypeError, match="int"):
        to_structure(42)


@pytest.mark.parametrize("value, message", [("nan", "non-finite"), ("inf", "non-finite"),
                                            ("-5.64", "cell lengths must be positive")])
def test_cif_with_impossible_cell_is_a_parse_error_not_a_crash(nacl_cif, value, message):
    import re

    from crystalformer.io import structure_from_cif

    text = re.sub(r"_cell_length_a\s+\S+", f"_cell_length_a {value}", nacl_cif)
    with pytest.raises(CrystalError, match=message) as info:
        structure_from_cif(text, "bad.cif")
    assert info.value.reason == "parse" and "bad.cif" in str(info.value)


def test_non_finite_structures_and_non_periodic_atoms_are_refused():
    from ase import Atoms

    from crystalformer.io import to_structure

    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.replace(1, "Cl", [float("nan"), 0.5, 0.5])
    with pytest.raises(CrystalError, match="non-finite"):
        to_structure(s)
    molecule = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[10, 10, 10], pbc=False)
    with pytest.raises(CrystalError, match="not periodic"):
        to_structure(molecule)


def test_enormous_cif_is_refused_before_parsing():
    from crystalformer.io import MAX_CIF_LINES, structure_from_cif

    with pytest.raises(CrystalError, match="refused before parsing"):
        structure_from_cif("data_x\n" + "# filler\n" * (MAX_CIF_LINES + 1), "huge.cif")


def test_cif_with_more_atoms_than_analysed_is_refused_before_parsing(nacl_cif):
    """pymatgen takes minutes to parse 20,000 atoms: the atom rows are counted first."""
    import time

    from crystalformer.errors import MAX_INPUT_ATOMS
    from crystalformer.io import _atom_site_rows, structure_from_cif

    head = nacl_cif.split("loop_\n _atom_site_type_symbol")[0]
    rows = "".join(f"  Na  Na{i}  0.{i:06d}  0.5  0.5\n" for i in range(MAX_INPUT_ATOMS + 1))
    text = (head + "loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n"
            " _atom_site_fract_z\n" + rows)
    assert _atom_site_rows(text) == MAX_INPUT_ATOMS + 1
    assert _atom_site_rows(nacl_cif) == 8  # the symmetry-operation loop is not counted
    t0 = time.perf_counter()
    with pytest.raises(CrystalError, match="5,001 atom sites.*refused before parsing"):
        structure_from_cif(text, "big.cif")
    assert time.perf_counter() - t0 < 5
