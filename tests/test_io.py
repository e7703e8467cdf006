from __future__ import annotations

import pandas as pd
import pytest

from crystalformer import CrystalError
from crystalformer.io import read_cif_records, read_csv_records, read_records, structure_from_cif, to_structure


def test_csv_records_keep_ids_and_numeric_columns(data_dir):
    recs = list(read_csv_records(data_dir / "mp20_sample.csv"))
    assert len(recs) == 30 and recs[0].material_id.startswith("mp-")
    assert set(recs[0].properties) >= {"formation_energy_per_atom", "band_gap"}
    assert "Unnamed: 0" not in recs[0].properties


def test_csv_without_material_id(tmp_path, data_dir):
    path = tmp_path / "x.csv"
    pd.DataFrame({"cif": pd.read_csv(data_dir / "perov5_sample.csv").cif.head(2)}).to_csv(path, index=False)
    assert [r.material_id for r in read_records(path)] == ["row0", "row1"]


def test_cif_records_and_errors(data_dir, tmp_path):
    recs = list(read_cif_records(data_dir / "cif"))
    assert [r.material_id for r in recs] == ["CuAu_disordered", "NaCl", "broken"]
    with pytest.raises(FileNotFoundError):
        list(read_cif_records(tmp_path))
    with pytest.raises(CrystalError, match="unreadable|empty") as err:
        structure_from_cif("", "blank")
    assert err.value.reason == "parse"


def test_to_structure(data_dir):
    s = to_structure(data_dir / "cif" / "NaCl.cif")
    assert len(s) == 8
    assert to_structure(s) is s
    with pytest.raises(FileNotFoundError):
        to_structure(data_dir / "nope.cif")
