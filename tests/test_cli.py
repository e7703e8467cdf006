"""The command line: `crystalformer data prepare` end to end, in process and as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crystalformer import __version__
from crystalformer.cli import main
from crystalformer.data import load_prepared


def _table(text: str) -> dict[str, str]:
    """The summary table as {row name: value} (other lines ignored)."""
    return dict(line.strip().split(maxsplit=1) for line in text.splitlines() if len(line.split()) >= 2)


def test_data_prepare_prints_a_summary_and_reuses_the_cache(tmp_path, data_dir, capsys):
    out = tmp_path / "prep"
    argv = ["data", "prepare", "--csv", str(data_dir / "perov5_sample.csv"), "--cif", str(data_dir / "cif"),
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    table = _table(text)
    assert {k: table[k] for k in ("cache", "structures", "kept", "skipped", "disordered", "parse")} == {
        "cache": "built", "structures": "23", "kept": "21", "skipped": "2", "disordered": "1", "parse": "1"}
    assert table["elapsed"].endswith(" s") and "skipped.jsonl" in text
    assert len(load_prepared(out)) == 21
    assert main(argv) == 0
    assert _table(capsys.readouterr().out)["cache"].startswith("reused")
    assert main(argv + ["--force", "--symprec", "0.1", "--n-max", "8", "--workers", "2"]) == 0
    assert _table(capsys.readouterr().out)["cache"] == "built"
    assert load_prepared(out).meta["settings"] == {"symprec": 0.1, "angle_tolerance": 5.0, "n_max": 8}


@pytest.mark.parametrize("args, message", [
    (["--csv", "missing.csv"], "--csv missing.csv: file not found"),
    (["--cif", "nowhere"], "--cif nowhere: file or folder not found"),
    ([], "at least one --csv"),
    (["--csv", "{cif}"], "expected a .csv file"),
    (["--csv", "{csv}", "--symprec", "0"], "symprec must be in"),
    (["--csv", "{csv}", "--workers", "0"], "workers must be"),
])
def test_data_prepare_usage_errors_exit_2(args, message, tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(csv=data_dir / "perov5_sample.csv", cif=data_dir / "cif" / "NaCl.cif") for a in args]
    assert main(["data", "prepare", *args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crystalformer: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_out_folder_that_is_not_prepared_is_left_alone(tmp_path, data_dir, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["data", "prepare", "--cif", str(data_dir / "cif" / "NaCl.cif"), "--out", str(tmp_path / "mine")]) == 2
    assert "not a prepared directory" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_version_and_missing_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"crystalformer {__version__}"
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["data", "prepare"])  # --out is required
    assert info.value.code == 2 and "--out" in capsys.readouterr().err


def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_python_m_crystalformer_runs_end_to_end(tmp_path, data_dir):
    out = tmp_path / "prep"
    run = subprocess.run([sys.executable, "-m", "crystalformer", "data", "prepare", "--cif", str(data_dir / "cif"),
                          "--out", str(out), "--quiet"], capture_output=True, text=True, env=_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    table = _table(run.stdout)
    assert (table["kept"], table["parse"], table["disordered"]) == ("1", "1", "1")
    assert load_prepared(out).records[0]["material_id"] == "NaCl"
    missing = subprocess.run([sys.executable, "-m", "crystalformer", "data", "prepare", "--csv", "nope.csv",
                              "--out", str(out)], capture_output=True, text=True, env=_env(), timeout=120)
    assert missing.returncode == 2 and "nope.csv: file not found" in missing.stderr


def test_console_script_reports_its_version():
    script = shutil.which("crystalformer", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the crystalformer console script is not installed in this environment")
    run = subprocess.run([script, "--version"], capture_output=True, text=True, env=_env(), timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"crystalformer {__version__}"


def test_threads_default_to_one_for_decoding_and_follow_the_option(tmp_path, monkeypatch, capsys):
    import torch

    from crystalformer.cli import build_parser, main

    previous = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert main(["sample", "--n", "2", "--out", str(tmp_path / "a"), "--quiet"]) == 0
        assert torch.get_num_threads() == 1  # no thread variable set: one thread for decoding
        assert main(["sample", "--n", "2", "--out", str(tmp_path / "b"), "--quiet", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        assert main(["sample", "--n", "2", "--out", str(tmp_path / "c"), "--quiet", "--threads", "0"]) == 2
        assert "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(previous)
    parser = build_parser()  # every command takes --threads
    for command in (["train", "--data", "x", "--out", "y"], ["csp", "--composition", "NaCl", "--out", "o"],
                    ["evaluate", "csp", "--predictions", "p", "--targets", "t", "--json", "j"], ["models"]):
        assert parser.parse_args([*command, "--threads", "3"]).threads == 3


@pytest.mark.parametrize("extra, message", [
    (["--sites", "Sr"], "--sites Sr: expected site indices"),
    (["--element", "Na", "--tie", "a=b"], "--tie 'a=b': expected I=J"),
])
def test_infill_site_options_give_one_line(extra, message, tmp_path, data_dir, capsys):
    from crystalformer.cli import main

    argv = ["infill", "--template", str(data_dir / "cif" / "NaCl.cif"), *extra, "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("crystalformer: error: ") and message in err and "Traceback" not in err


def test_help_parses_without_loading_torch():
    """``crystalformer --help`` and every command's help must not import torch (it takes seconds)."""
    code = ("import sys\nfrom crystalformer.cli import build_parser\nbuild_parser()\n"
            "heavy = [m for m in ('torch', 'pymatgen', 'lightning', 'chgnet') if m in sys.modules]\n"
            "print(heavy)\nsys.exit(1 if heavy else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("argv, message", [
    (["csp", "--composition", "NaCl0"], "Cl count 0 is not a positive integer"),
    (["csp", "--composition", "Na63Cl64"], "127 atoms, more than max_atoms=80"),
    (["csp", "--composition", "NaCl", "--max-atoms", "0"], "max_atoms must be an integer >= 1"),
    (["csp", "--composition", "NaCl", "--particles", "0"], "--particles must be >= 1"),
    (["csp", "--composition", "NaCl", "--n", "1000000000"], "n and n_particles must be 1 to"),
    (["csp", "--composition", "NaCl", "--formula-units", "0"], "formula units must be integers >= 1"),
    (["csp", "--composition", "NaCl", "--formula-units", "x"], "--formula-units x: expected whole numbers"),
    (["csp", "--composition", "NaCl", "--temperature", "nan"], "need temperature > 0"),
    (["sample", "--n", "2", "--top-p", "inf"], "0 < top_p <= 1"),
])
def test_impossible_requests_are_one_line_errors(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crystalformer: error: ") and message in err and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def _edit_config(folder, edit):
    import json

    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(data)))


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
     "model.safetensors: cannot read the weights"),
    (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors: cannot read the weights"),
    (lambda d: _edit_config(d, lambda c: {k: v for k, v in c.items() if k != "model"}), 'has no "model" section'),
    (lambda d: _edit_config(d, lambda c: [1, 2]), "a JSON object is expected"),
    (lambda d: _edit_config(d, lambda c: {**c, "model": {**c["model"], "d_model": "wide"}}), "model.d_model must be a number"),
    (lambda d: _edit_config(d, lambda c: {**c, "model": {**c["model"], "d_model": 262144}}), "the folder is inconsistent"),
    (lambda d: (d / "config.json").write_text("not json"), "config.json is not valid JSON"),
    (lambda d: (d / "tokenizer.json").unlink(), "missing tokenizer.json"),
])
def test_corrupt_model_folders_are_one_line_errors(corrupt, message, tmp_path, capsys):
    from crystalformer.defaults import resolve_model

    folder = tmp_path / "model"
    shutil.copytree(resolve_model("perov_5"), folder)
    corrupt(folder)
    assert main(["sample", "--model", str(folder), "--n", "2", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crystalformer: error: ") and message in err and "Traceback" not in err


def test_table_shows_the_space_group_spglib_finds_and_reduced_formulas(capsys):
    """Rock salt written in R-3m (166) by the model is shown as 225, with the model's label beside it."""
    import math

    from crystalformer import Crystal
    from crystalformer.sampling.api import Sample
    from crystalformer.sampling.cli import _print_table

    a_cubic = 5.64
    rock_salt = Crystal.from_text(f"166 a Na - b Cl - | {a_cubic / math.sqrt(2)} {a_cubic * math.sqrt(3)}")
    _print_table([Sample(rock_salt, -1.0)])
    out = capsys.readouterr().out
    row = out.splitlines()[1].split()
    assert row[1:4] == ["225", "(166)", "NaCl"], out
    assert "the model's label in brackets" in out


@pytest.mark.parametrize("argv, message", [
    (["sample", "--n", "2", "--device", "bogus"], "not a torch device"),
    (["sample", "--n", "2", "--device", "cuda:7"], "--device cuda:7"),
    (["refine", "--input", "{cif}", "--batch-size", "0"], "--batch-size must be 1 to 100,000"),
])
def test_devices_and_batch_sizes_are_checked_in_one_line(argv, message, tmp_path, data_dir, capsys):
    import torch

    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight CUDA devices")
    argv = [a.format(cif=data_dir / "cif" / "NaCl.cif") for a in argv]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crystalformer: error: ") and message in err


def test_distinct_samples_keeps_the_first_of_each_structure():
    from pymatgen.core import Lattice, Structure

    from crystalformer import Crystal
    from crystalformer.sampling.api import Sample
    from crystalformer.sampling.dedup import distinct_samples

    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    a, b = Crystal.from_structure(rock_salt), Crystal.from_structure(rock_salt.get_primitive_structure())
    samples = [Sample(a, -1.0), Sample(None, -2.0), Sample(b, -3.0), Sample(Crystal.from_structure(cscl), -4.0)]
    kept, removed = distinct_samples(samples)
    assert removed == 1 and [s.log_likelihood for s in kept] == [-1.0, -2.0, -4.0]
    assert [s.log_likelihood for s in distinct_samples(samples, limit=2)[0]] == [-1.0, -2.0]


def test_csp_by_log_p_writes_distinct_structures(tmp_path, capsys):
    import json

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    out = tmp_path / "out"
    assert main(["csp", "--composition", "NaCl", "--n", "6", "--out", str(out), "--quiet"]) == 0
    assert "duplicates of higher-ranked crystals removed from 12 drawn" in capsys.readouterr().out
    rows = json.loads((out / "samples.json").read_text())["samples"]
    structures = [Structure.from_file(out / r["file"]) for r in rows if r["file"]]
    matcher = StructureMatcher()
    assert not any(matcher.fit(x, y) for i, x in enumerate(structures) for y in structures[i + 1:])


def test_sample_streams_in_chunks_and_writes_what_sample_returns(tmp_path, monkeypatch, capsys):
    """A large --n is drawn, refined and written chunk by chunk: the same crystals as one batch."""
    import json

    import crystalformer.sampling.cli as sampling_cli
    from crystalformer.defaults import resolve_model
    from crystalformer.model import load_model
    from crystalformer.sampling.api import sample

    from crystalformer.sampling import output

    sizes = []

    class Spy(output.SampleWriter):
        def add(self, samples, names=None, extra=None):
            sizes.append(len(samples))
            super().add(samples, names, extra)

    monkeypatch.setattr(output, "SampleWriter", Spy)
    monkeypatch.setattr(sampling_cli, "STREAM_CHUNK", 4)
    out = tmp_path / "out"
    assert main(["sample", "--model", "perov_5", "--n", "10", "--batch-size", "3", "--seed", "5", "--out", str(out),
                 "--quiet"]) == 0
    assert sizes == [6, 4]  # batches of 3 regrouped into chunks of at least 4: never all 10 at once
    rows = json.loads((out / "samples.json").read_text())["samples"]
    assert [r["index"] for r in rows] == list(range(10))
    expected = sample(load_model(resolve_model("perov_5")), 10, batch_size=3, seed=5)
    assert [r["log_likelihood"] for r in rows] == pytest.approx([s.log_likelihood for s in expected.samples], abs=1e-4)
    assert sorted(p.name for p in out.glob("*.cif")) == [f"sample_{i:05d}.cif" for i in range(10)]
    assert "10 sampled" in capsys.readouterr().out


def test_sample_writer_leaves_nothing_when_a_part_fails(tmp_path):
    from crystalformer.sampling.output import SampleWriter

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with SampleWriter(out) as writer:
            writer.add([])
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--space-group", "225,221", "--space-group", "1"],
                                  ["--space-group", "225", "--space-group", "221,1"]])
def test_list_options_are_repeatable_and_comma_separated(argv):
    from crystalformer.cli import build_parser
    from crystalformer.options import int_list

    args = build_parser().parse_args(["sample", "--out", "x", *argv, "--elements", "Li, Mn", "--elements", "O"])
    assert int_list(args.space_group, "--space-group") == [225, 221, 1]
    assert args.elements == ["Li", "Mn", "O"]
    args = build_parser().parse_args(["design", "--target", "heat_ref=min", "--out", "x", *argv])
    assert int_list(args.space_group, "--space-group") == [225, 221, 1]


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["csp", "--composition", "NaCl", "--rank", "bogus", "--out", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("crystalformer: error: argument --rank")


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--seed SEED", "default 0"), ("--temperature TEMPERATURE", "default 1.0"),
                            ("--device DEVICE", "default cpu"), ("--batch-size BATCH_SIZE", "default 256")):
        assert f"{option} " in text
        assert default in text.split(f"{option} ", 1)[1][:200], option


def test_sample_atoms_option_gives_exactly_that_many_atoms(tmp_path):
    import json

    out = tmp_path / "s"
    assert main(["sample", "--model", "perov_5", "--n", "12", "--atoms", "5", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "samples.json").read_text())
    assert {r["num_atoms"] for r in data["samples"]} == {5} and data["meta"]["atoms"] == [5]


def test_lightning_device_names():
    from crystalformer.errors import UsageError
    from crystalformer.options import lightning_device

    assert lightning_device("cpu") == ("cpu", "1") and lightning_device("cuda") == ("gpu", "1")
    assert lightning_device("cuda:2") == ("gpu", "2,") and lightning_device(None) == ("auto", "auto")
    for bad in ("tpu", "cuda:x"):
        with pytest.raises(UsageError, match="--device"):
            lightning_device(bad)


@pytest.mark.parametrize("command", [["sample"], ["csp"], ["infill"], ["design"], ["finetune"], ["refine"], ["train"],
                                     ["train-refiner"], ["relax"], ["physics", "build-hull"],
                                     ["evaluate", "generation"]])
def test_every_command_that_computes_takes_device(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "--device" in capsys.readouterr().out
