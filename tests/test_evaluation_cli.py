"""``crystalformer evaluate generation|csp`` end to end on tiny inputs; refusals and bad input."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"


def run_cli(argv: list[str]) -> int:
    """Parse with the evaluate parser alone and handle errors as ``crystalformer.cli.main`` does."""
    from crystalformer.cli import UsageError
    from crystalformer.evaluation.cli import add_parser

    parser = argparse.ArgumentParser(prog="crystalformer")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        print(f"crystalformer: error: {err}", file=sys.stderr)
        return 2


@pytest.fixture
def tiny(tmp_path):
    df = pd.read_csv(DATA / "perov5_sample.csv")
    df.head(3).to_csv(tmp_path / "samples.csv", index=False)
    df.head(5).to_csv(tmp_path / "reference.csv", index=False)
    return tmp_path


def test_generation_end_to_end_and_no_overwrite(tiny, capsys):
    out = tiny / "gen.json"
    argv = ["evaluate", "generation", "--samples", str(tiny / "samples.csv"), "--reference", str(tiny / "reference.csv"),
            "--json", str(out), "--dataset", "perov_5", "--quiet"]
    assert run_cli(argv) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["n_samples"] == 3 and 3 / 5 <= r["metrics"]["cov_recall"] < 1  # each sample recalls itself
    assert r["metrics"]["cov_precision"] == 1.0 and r["metrics"]["novelty"] == 0.0
    assert r["settings"]["struct_cutoff"] == 0.2
    assert (tiny / "gen.png").read_bytes()[:4] == b"\x89PNG"
    before = out.read_bytes()
    assert run_cli(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert run_cli(argv + ["--overwrite", "--no-coverage", "--no-novelty"]) == 0
    assert "cov_recall" not in json.loads(out.read_text())["metrics"]
    assert not list(tiny.glob("*.tmp"))


def test_generation_reads_a_samples_folder(tiny):
    df = pd.read_csv(DATA / "perov5_sample.csv").head(2)
    folder = tiny / "samples"
    folder.mkdir()
    rows = []
    for i, cif in enumerate(df["cif"]):
        (folder / f"sample_{i:05d}.cif").write_text(cif)
        rows.append({"index": i, "file": f"sample_{i:05d}.cif"})
    rows.append({"index": 2, "file": None, "error": "not decoded"})
    (folder / "samples.json").write_text(json.dumps({"meta": {}, "samples": rows}))
    out = tiny / "gen.json"
    assert run_cli(["evaluate", "generation", "--samples", str(folder), "--reference", str(tiny / "reference.csv"),
                    "--json", str(out), "--no-report", "--no-coverage", "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["n_samples"] == 3 and r["metrics"]["struct_valid"] == pytest.approx(2 / 3)
    assert r["failures"]["samples"]["by_step"] == {"missing": 1}
    assert not (tiny / "gen.png").exists()


def _csp_folder(tmp_path, n: int) -> tuple[Path, Path]:
    from pymatgen.core import Structure

    df = pd.read_csv(DATA / "mp20_sample.csv").head(n)
    df.to_csv(tmp_path / "targets.csv", index=False)
    folder = tmp_path / "csp"
    folder.mkdir()
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (mid, cif) in enumerate(zip(df["material_id"], df["cif"])):
            s = Structure.from_str(cif, fmt="cif")
            s.perturb(0.05)
            wrong = df["cif"].iloc[(i + 1) % n]
            for rank, text in ((0, s.to(fmt="cif") if i % 2 == 0 else wrong), (1, s.to(fmt="cif"))):
                (folder / f"{mid}_{rank}.cif").write_text(text)
                rows.append({"file": f"{mid}_{rank}.cif", "material_id": mid, "rank": rank, "log_likelihood": -1.0})
    (folder / "samples.json").write_text(json.dumps(rows))
    return folder, tmp_path / "targets.csv"


def test_csp_end_to_end(tmp_path):
    folder, targets = _csp_folder(tmp_path, 4)
    out = tmp_path / "csp.json"
    assert run_cli(["evaluate", "csp", "--predictions", str(folder), "--targets", str(targets),
                    "--json", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    m = r["metrics"]
    n_valid = m["n_targets_valid"]
    assert m["n_targets"] == 4 and m["match_rate@2"] == pytest.approx(n_valid / 4)
    assert m["match_rate@1"] <= m["match_rate@2"] and 0 < m["rmse@2"] < 0.2
    assert (tmp_path / "csp.png").is_file()
    # the same predictions without samples.json: material_id and rank come from the file names
    (folder / "samples.json").unlink()
    assert run_cli(["evaluate", "csp", "--predictions", str(folder), "--targets", str(targets),
                    "--json", str(tmp_path / "csp2.json"), "--no-report", "--quiet"]) == 0
    assert json.loads((tmp_path / "csp2.json").read_text())["metrics"] == m


@pytest.mark.parametrize("case", ["missing_samples", "bad_csv", "bad_json_name", "half_cutoffs", "bad_workers"])
def test_generation_bad_input_is_reported(tiny, case, capsys):
    bad_csv = tiny / "bad.csv"
    bad_csv.write_text("material_id,formula\n1,NaCl\n")
    args = {"samples": tiny / "samples.csv", "json": tiny / "o.json", "extra": []}
    if case == "missing_samples":
        args["samples"], expect = tiny / "nope.csv", "not found"
    elif case == "bad_csv":
        args["samples"], expect = bad_csv, "no 'cif' column"
    elif case == "bad_json_name":
        args["json"], expect = tiny / "o.txt", ".json"
    elif case == "half_cutoffs":
        args["extra"], expect = ["--struct-cutoff", "0.3"], "--comp-cutoff"
    else:
        args["extra"], expect = ["--workers", "0"], "--workers"
    code = run_cli(["evaluate", "generation", "--samples", str(args["samples"]), "--reference",
                    str(tiny / "reference.csv"), "--json", str(args["json"]), "--quiet", *args["extra"]])
    assert code == 2 and expect in capsys.readouterr().err
    assert not args["json"].exists()


def test_csp_bad_input_is_reported(tmp_path, capsys):
    folder, targets = _csp_folder(tmp_path, 2)
    other = tmp_path / "other.csv"
    pd.read_csv(DATA / "mp20_sample.csv").iloc[5:7].to_csv(other, index=False)
    assert run_cli(["evaluate", "csp", "--predictions", str(folder), "--targets", str(other),
                    "--json", str(tmp_path / "o.json"), "--quiet"]) == 2
    assert "no prediction matches" in capsys.readouterr().err
    (folder / "samples.json").write_text("{not json")
    assert run_cli(["evaluate", "csp", "--predictions", str(folder), "--targets", str(targets),
                    "--json", str(tmp_path / "o.json"), "--quiet"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert run_cli(["evaluate", "csp", "--predictions", str(folder), "--targets", str(targets), "--k", "0",
                    "--json", str(tmp_path / "o.json"), "--quiet"]) == 2


def test_json_into_a_folder_that_does_not_exist_yet_creates_it(tmp_path):
    folder, targets = _csp_folder(tmp_path, 2)
    out = tmp_path / "eval" / "deeper" / "csp.json"
    assert run_cli(["evaluate", "csp", "--predictions", str(folder), "--targets", str(targets),
                    "--json", str(out), "--quiet"]) == 0
    assert out.is_file() and out.with_suffix(".png").is_file()
