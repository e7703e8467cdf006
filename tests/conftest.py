"""Shared fixtures: small CSV files cut from ../shared/data (see tests/data/README.md)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def load_fixture_crystals(name: str = "mp20_sample.csv"):
    """(material_id, Crystal) for every row of a fixture CSV."""
    import pandas as pd
    from pymatgen.core import Structure

    from crystalformer import Crystal

    df = pd.read_csv(DATA / name)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's "coordinates rounded to ideal values" notes
        for mid, cif in zip(df["material_id"], df["cif"]):
            out.append((str(mid), Crystal.from_structure(Structure.from_str(cif, fmt="cif"))))
    return out


@pytest.fixture(scope="session")
def fixture_crystals():
    """Crystals from every fixture CSV, as (material_id, Crystal)."""
    out = []
    for name in sorted(p.name for p in DATA.glob("*_sample.csv")):
        out += load_fixture_crystals(name)
    return out


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests use tiny models: one intra-op thread each avoids oversubscribing the cores under pytest-xdist."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def evaluation_cache_in_tmp(tmp_path_factory):
    """Reference fingerprints cached by evaluations go to a per-session folder, never the home cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRYSTALFORMER_CACHE", str(tmp_path_factory.mktemp("crystalformer_cache")))
        yield
