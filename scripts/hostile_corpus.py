"""Hostile inputs and faults against the command line: every case must end in a clear error or be handled.

    python scripts/hostile_corpus.py --json runs/hostile.json          # every case, one process each
    python scripts/hostile_corpus.py --only cif --only model             # some groups

Each case runs ``crystalformer ...`` (or a short Python snippet against the library) in its own
process, in a workspace of broken files built here (non-finite CIFs, cut CSVs, corrupt model
folders, hostile checkpoints and YAML, protected output folders). Outcomes:

- ``clear``: the expected exit code and one ``crystalformer: error:`` line containing the phrase;
- ``handled``: exit 0 and the case's check of the output holds (e.g. good rows kept, bad ones counted);
- ``crash``: killed by a signal (a segmentation fault); ``traceback``: a Python traceback;
- ``wrong``: another exit code, or exit 0 with wrong or missing output (a silent loss);
- ``hang``: still running at the time limit.

The same table runs in-process in ``tests/test_hostile.py`` (the fast cases by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    argv: tuple[str, ...]  # "{ws}" is replaced by the workspace folder; ("python", code) runs a snippet
    code: int  # expected exit code
    phrase: str = ""  # must appear in the error line (code != 0) or in stdout (code 0)
    check: str | None = None  # post-condition, see :func:`check_outcome`
    slow: bool = False  # loads a potential, trains or decodes many crystals: skipped by the default tests
    needs_nonroot: bool = False  # file permissions do not stop root


def _c(id, group, argv, code, phrase="", check=None, slow=False, needs_nonroot=False) -> Case:
    return Case(id, group, tuple(argv.split()) if isinstance(argv, str) else tuple(argv), code, phrase, check, slow,
                needs_nonroot)


# ---------------------------------------------------------------------- the workspace
NACL = (FIXTURES / "cif" / "NaCl.cif")


def _nacl(**edits) -> str:
    text = NACL.read_text()
    for old, new in edits.items():
        text = text.replace(old.replace("__", " "), new, 1)
    return text


def build_workspace(ws: Path) -> None:
    """Every broken file the cases refer to."""
    ws.mkdir(parents=True, exist_ok=True)
    good = NACL.read_text()
    line_a = "_cell_length_a   5.64000000"
    line_alpha = "_cell_angle_alpha   90.00000000"
    first_na = "Na  Na0  1  0.00000000  0.00000000  0.00000000  1"
    cifs = {
        "good.cif": good,
        "nan_len.cif": good.replace(line_a, "_cell_length_a   nan"),
        "inf_len.cif": good.replace(line_a, "_cell_length_a   inf"),
        "neg_len.cif": good.replace(line_a, "_cell_length_a   -5.64"),
        "zero_len.cif": good.replace(line_a, "_cell_length_a   0"),
        "nan_angle.cif": good.replace(line_alpha, "_cell_angle_alpha   nan"),
        "flat_cell.cif": good.replace(line_alpha, "_cell_angle_alpha   180.0"),
        "nan_coord.cif": good.replace(first_na, "Na  Na0  1  nan  0.00000000  0.00000000  1"),
        "inf_coord.cif": good.replace(first_na, "Na  Na0  1  0.00000000  inf  0.00000000  1"),
        "unknown_element.cif": good.replace("Na  Na0", "Xx  Xx0"),
        "no_atoms.cif": good.split("loop_\n _atom_site_type_symbol")[0],
        "empty.cif": "",
        "text.cif": "this is not a CIF file\n",
        "disordered.cif": (FIXTURES / "cif" / "CuAu_disordered.cif").read_text(),
        "broken.cif": (FIXTURES / "cif" / "broken.cif").read_text(),
    }
    for name, text in cifs.items():
        (ws / name).write_text(text)
    (ws / "binary.cif").write_bytes(bytes(range(256)) * 40)
    (ws / "latin1.cif").write_bytes(good.replace("# generated using pymatgen", "# caf\xe9").encode("latin-1"))
    big = good.split("loop_\n _atom_site_type_symbol")[0] + "loop_\n _atom_site_type_symbol\n _atom_site_label\n" \
        " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n"
    (ws / "huge.cif").write_text(big + "".join(f"  Na  Na{i}  0.{i:06d}  0.5  0.5\n" for i in range(210_000)))
    _many_sites(ws / "sites150.cif")
    (ws / "atoms6000.cif").write_text(big + "".join(f"  Na  Na{i}  0.{i:06d}  0.5  0.5\n" for i in range(6000)))

    mixed = ws / "mixed_cifs"
    mixed.mkdir(exist_ok=True)
    for name in ("good.cif", "nan_len.cif", "neg_len.cif", "nan_coord.cif", "disordered.cif", "binary.cif",
                 "unknown_element.cif"):
        shutil.copy(ws / name, mixed / name)

    _csvs(ws)
    _models(ws)
    _runs(ws)
    _configs(ws)
    _outputs(ws)


def _many_sites(path: Path) -> None:
    """150 atoms without symmetry: 150 Wyckoff sites, more than any shipped model writes."""
    lines = [f"  {'Sr' if i < 50 else 'O'}  X{i}  {(i // 25) / 6 + 0.01 * (i % 3):.5f}  {((i // 5) % 5) / 5:.5f}  "
             f"{(i % 5) / 5 + 0.003 * (i % 7):.5f}" for i in range(150)]
    path.write_text("data_big\n_cell_length_a 18\n_cell_length_b 15\n_cell_length_c 15\n_cell_angle_alpha 90\n"
                    "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n"
                    " _atom_site_type_symbol\n _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n"
                    " _atom_site_fract_z\n" + "\n".join(lines) + "\n")


def _csvs(ws: Path) -> None:
    import csv

    src = FIXTURES / "mp20_sample.csv"
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0])

    def write(name, table, header=fields):
        with open(ws / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
            w.writeheader()
            w.writerows(table)

    write("good.csv", rows)
    bad = [dict(r) for r in rows[:10]]
    bad[1]["cif"] = bad[1]["cif"].replace("_cell_length_a ", "_cell_length_a nan #", 1)
    bad[3]["cif"] = bad[3]["cif"].replace("_cell_length_b ", "_cell_length_b inf #", 1)
    bad[5]["cif"] = "garbage"
    bad[7]["cif"] = ""
    write("mixed.csv", bad)  # 6 good rows, 4 bad
    text = src.read_text()
    (ws / "cut.csv").write_text(text[:len(text) // 3])  # `head` cuts a CIF field in half
    write("nocif.csv", rows, header=[f for f in fields if f != "cif"])
    (ws / "empty.csv").write_text("")
    write("header_only.csv", [])
    (ws / "binary.csv").write_bytes(bytes(range(256)) * 10)


def _models(ws: Path) -> None:
    sys.path.insert(0, str(REPO))
    from crystalformer.defaults import resolve_model

    base = resolve_model("perov_5")

    def corrupt(name, edit):
        folder = ws / "models" / name
        shutil.copytree(base, folder, dirs_exist_ok=True)
        edit(folder)

    def config(folder, fn):
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(fn(data)))

    weights = "model.safetensors"
    corrupt("truncated", lambda d: (d / weights).write_bytes((d / weights).read_bytes()[:1000]))
    corrupt("empty_weights", lambda d: (d / weights).write_bytes(b""))
    corrupt("no_weights", lambda d: (d / weights).unlink())
    corrupt("no_model_section", lambda d: config(d, lambda c: {k: v for k, v in c.items() if k != "model"}))
    corrupt("config_list", lambda d: config(d, lambda c: [1, 2]))
    corrupt("string_d_model", lambda d: config(d, lambda c: {**c, "model": {**c["model"], "d_model": "wide"}}))
    corrupt("huge_d_model", lambda d: config(d, lambda c: {**c, "model": {**c["model"], "d_model": 262144}}))
    corrupt("negative_layers", lambda d: config(d, lambda c: {**c, "model": {**c["model"], "n_layer": -1}}))
    corrupt("config_not_json", lambda d: (d / "config.json").write_text("not json"))
    corrupt("no_tokenizer", lambda d: (d / "tokenizer.json").unlink())
    corrupt("tokenizer_garbage", lambda d: (d / "tokenizer.json").write_text("{]"))
    (ws / "models" / "a_file").write_text("not a folder")


def _runs(ws: Path) -> None:
    import pickle

    import torch

    sys.path.insert(0, str(REPO))
    from crystalformer import ModelConfig, TrainConfig
    from crystalformer.config import config_to_dict

    run = {"model": config_to_dict(ModelConfig.from_name("tiny")), "train": config_to_dict(TrainConfig.from_name("tiny")),
           "data": [str(ws / "good.csv")], "val": None, "val_fraction": 0.05}
    for name in ("evil_run", "truncated_run", "garbage_run", "empty_run"):
        (ws / name / "checkpoints").mkdir(parents=True, exist_ok=True)
        (ws / name / "run.json").write_text(json.dumps(run))
    marker = ws / "EXECUTED"
    # a pickle that would create a file if anything unpickled it without weights_only
    (ws / "evil_run" / "checkpoints" / "last.ckpt").write_bytes(
        pickle.dumps({"state_dict": {}, "x": _Executes(str(marker))}, protocol=2))
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, ws / "truncated_run" / "checkpoints" / "last.ckpt")
    path = ws / "truncated_run" / "checkpoints" / "last.ckpt"
    path.write_bytes(path.read_bytes()[:300])
    torch.save({"state_dict": {}}, ws / "garbage_run" / "checkpoints" / "last.ckpt")
    (ws / "garbage_run" / "run.json").write_text('{"model": [1')


class _Executes:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _configs(ws: Path) -> None:
    (ws / "evil.yaml").write_text(f'model: !!python/object/apply:builtins.open ["{ws / "EXECUTED"}", "w"]\n')
    (ws / "broken.yaml").write_text("a: [1, 2\n")
    (ws / "list.yaml").write_text("- 1\n- 2\n")
    (ws / "unknown.yaml").write_text("no_such_field: 3\n")
    (ws / "latin1.yaml").write_bytes("max_epochs: 1 # caf\xe9\n".encode("latin-1"))


def _outputs(ws: Path) -> None:
    (ws / "home").mkdir(exist_ok=True)
    (ws / "home" / "notes.txt").write_text("a user's home folder")
    victim = ws / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "thesis.tex").write_text("years of work")
    (ws / "real_out").mkdir(exist_ok=True)
    link = ws / "link_out"
    if not link.is_symlink():
        link.symlink_to(ws / "real_out")
    (ws / "a_file.txt").write_text("a file, not a folder")
    readonly = ws / "readonly"
    readonly.mkdir(exist_ok=True)
    readonly.chmod(0o555)


# ---------------------------------------------------------------------- the cases
W = "{ws}"
OUT = "--out {ws}/out/{id}"
Q = "--quiet"


def _cif_cases() -> list[Case]:
    """Every broken CIF against every command that reads a structure."""
    cases = []
    broken = {"nan_len": "non-finite", "inf_len": "non-finite", "neg_len": "cell", "zero_len": "degenerate",
              "nan_angle": "non-finite", "flat_cell": "degenerate", "nan_coord": "non-finite", "inf_coord": "non-finite",
              "unknown_element": "Xx", "no_atoms": "", "empty": "", "text": "", "disordered": "partially occupied",
              "broken": "", "binary": "", "latin1": "", "huge": "atom sites", "atoms6000": "atom sites"}
    for name, phrase in broken.items():
        path = f"{W}/{name}.cif"
        if name == "latin1":  # a non-UTF-8 comment: read, not refused
            cases.append(_c(f"infill-{name}", "cif", f"infill --template {path} --element Na --allow K --n 1 {OUT} {Q}",
                            0, "", "cifs>=1"))
            continue
        cases.append(_c(f"infill-{name}", "cif", f"infill --template {path} --element Na --allow K {OUT} {Q}",
                        2, phrase, "no_out"))
        cases.append(_c(f"refine-{name}", "cif", f"refine --input {path} {OUT}", 2, "no readable crystals", "no_out"))
        cases.append(_c(f"prepare-{name}", "cif", f"data prepare --cif {path} {OUT}", 0, "skipped", "kept=0"))
    cases.append(_c("infill-150-sites", "cif", f"infill --template {W}/sites150.cif --element Sr --allow Ca {OUT} {Q}",
                    2, "150 symmetry-distinct"))
    cases.append(_c("infill-missing", "cif", f"infill --template {W}/nope.cif --element Na --allow K {OUT} {Q}",
                    2, "nope.cif"))
    cases.append(_c("prepare-mixed-folder", "cif", f"data prepare --cif {W}/mixed_cifs {OUT}", 0, "skipped", "kept=1"))
    cases.append(_c("prepare-mixed-folder-2-workers", "cif", f"data prepare --cif {W}/mixed_cifs --workers 2 {OUT}",
                    0, "skipped", "kept=1"))
    cases.append(_c("refine-mixed-folder", "cif", f"refine --input {W}/mixed_cifs {OUT}", 0, "skipped", "cifs=1"))
    evaluate = (f"evaluate generation --samples {W}/mixed_cifs --reference {W}/good.csv --no-report {Q} "
                f"--comp-cutoff 10")
    for i, bad in enumerate(("--symprec nan --struct-cutoff 0.4", "--symprec -1 --struct-cutoff 0.4",
                             "--struct-cutoff nan", "--max-samples 0 --struct-cutoff 0.4")):
        cases.append(_c(f"evaluate-option-{i}", "options", f"{evaluate} {bad} --json {W}/out/ev{i}/x.json", 2,
                        bad.split()[0]))
    cases.append(_c("evaluate-mixed-folder", "cif",
                    f"evaluate generation --samples {W}/mixed_cifs --reference {W}/good.csv --json {W}/out/eval/x.json "
                    f"--no-report {Q}", 0, "", "json"))
    for name, phrase in (("nan_len", "non-finite"), ("neg_len", "cell")):
        cases.append(_c(f"api-from_structure-{name}", "cif", (
            "python", f"from crystalformer.io import to_structure\nto_structure('{W}/{name}.cif')"), 1, phrase))
    cases.append(_c("api-ase-not-periodic", "cif", (
        "python", "from ase import Atoms\nfrom crystalformer.io import to_structure\n"
                  "to_structure(Atoms('NaCl', positions=[[0, 0, 0], [2.8, 0, 0]], pbc=False))"), 1, "periodic"))
    return cases


def _csv_cases() -> list[Case]:
    return [
        _c("prepare-mixed-csv", "csv", f"data prepare --csv {W}/mixed.csv {OUT}", 0, "skipped", "kept=6"),
        _c("prepare-mixed-csv-2-workers", "csv", f"data prepare --csv {W}/mixed.csv --workers 2 {OUT}", 0, "skipped",
           "kept=6"),
        _c("prepare-cut-csv", "csv", f"data prepare --csv {W}/cut.csv {OUT}", 2, "span many lines"),
        _c("prepare-no-cif-column", "csv", f"data prepare --csv {W}/nocif.csv {OUT}", 2, "cif"),
        _c("prepare-empty-csv", "csv", f"data prepare --csv {W}/empty.csv {OUT}", 2, "empty.csv"),
        _c("prepare-header-only", "csv", f"data prepare --csv {W}/header_only.csv {OUT}", 2, "header_only.csv"),
        _c("prepare-binary-csv", "csv", f"data prepare --csv {W}/binary.csv {OUT}", 2, "binary.csv"),
        _c("prepare-missing-csv", "csv", f"data prepare --csv {W}/nope.csv {OUT}", 2, "nope.csv"),
        _c("prepare-cif-as-csv", "csv", f"data prepare --csv {W}/good.cif {OUT}", 2, "--cif"),
        _c("train-mixed-csv", "csv", f"train --preset tiny --data {W}/mixed.csv {OUT} --set max_epochs=1 "
           f"--cache-dir {W}/cache {Q}", 0, "", "trained", slow=True),
    ]


def _model_cases() -> list[Case]:
    cases = [_c(f"model-{name}", "model", f"sample --model {W}/models/{name} --n 2 {OUT} {Q}", 2, phrase, "no_out")
             for name, phrase in (("truncated", "cannot read the weights"), ("empty_weights", "cannot read the weights"),
                                  ("no_weights", "model.safetensors"), ("no_model_section", '"model"'),
                                  ("config_list", "JSON object"), ("string_d_model", "d_model"),
                                  ("huge_d_model", "inconsistent"), ("negative_layers", "n_layer"),
                                  ("config_not_json", "not valid JSON"), ("no_tokenizer", "tokenizer.json"),
                                  ("tokenizer_garbage", "tokenizer.json"), ("a_file", "a_file"))]
    cases.append(_c("model-missing", "model", f"sample --model {W}/models/nope --n 2 {OUT} {Q}", 2, "nope"))
    cases.append(_c("model-unknown-name", "model", f"sample --model mp_21 --n 2 {OUT} {Q}", 2, "mp_21"))
    cases.append(_c("csp-corrupt-model", "model", f"csp --model {W}/models/truncated --composition NaCl {OUT} {Q}", 2,
                    "cannot read the weights"))
    cases.append(_c("refine-corrupt-refiner", "model", f"refine --model {W}/models/truncated --input {W}/good.cif {OUT}",
                    2, "models/truncated"))
    return cases


def _option_cases() -> list[Case]:
    comp = [("NaCl0", "not a positive integer"), ("Na63Cl64", "more than max_atoms"), ("Xx2", "unknown element"),
            ("", "composition"), ("Na1.5Cl", "not a positive integer"), ("NaCl(", "composition")]
    cases = [_c(f"csp-composition-{i}", "options", ["csp", "--composition", f, *OUT.split(), Q], 2, p, "no_out")
             for i, (f, p) in enumerate(comp)]
    bad = [
        ("csp", "--composition NaCl --max-atoms 0", "max_atoms"), ("csp", "--composition NaCl --max-atoms -1", "max_atoms"),
        ("csp", "--composition NaCl --particles 0", "--particles"), ("csp", "--composition NaCl --n 1000000000", "n and"),
        ("csp", "--composition NaCl --formula-units 0", "formula units"),
        ("csp", "--composition NaCl --formula-units x", "--formula-units"),
        ("csp", "--composition NaCl --temperature nan", "temperature"),
        ("csp", "--composition NaCl --temperature -1", "temperature"),
        ("csp", "--composition NaCl --top-p 0", "top_p"), ("csp", "--composition NaCl --space-group 231", "231"),
        ("csp", "", "exactly one of"),
        ("sample", "--n 0", "n >= 1"), ("sample", "--n -5", "n >= 1"), ("sample", "--n 2 --batch-size 0", "batch_size"),
        ("sample", "--n 2 --temperature nan", "temperature"), ("sample", "--n 2 --top-p inf", "top_p"),
        ("sample", "--n 2 --space-group 999", "999"), ("sample", "--n 2 --elements Xx", "Xx"),
        ("sample", "--n 2 --device cuda", "CUDA"), ("sample", "--n 2 --device bogus", "bogus"),
        ("sample", "--n 2 --threads 0", "--threads"),
        ("sample", "--n 2 --atoms 0", "--atoms"), ("sample", "--n 2 --atoms x", "--atoms"),
        ("sample", "--n 2 --atoms 100000", "atoms"), ("sample", "--n 2 --format pdb", "--format"),
        ("sample", "--n 2 --filter pretty", "--filter"),
        ("sample", "--n 2 --elements ,", "holds no value"),
        ("sample", "--n 1000000000 --batch-size 1000000000", "batch_size"),
        ("design", "--target heat_ref=min --n 1000000000", "--n must be 1 to"),
        ("finetune", "--target heat_ref=min --batch-size 1000000000", "batch_size"),
        ("refine", f"--input {W}/good.cif --batch-size 1000000000", "batch"),
        ("refine", f"--input {W}/good.cif --batch-size 0", "batch"),
        ("refine", f"--input {W}/good.cif --n-corrector -1", "corrector"),
        ("refine", f"--input {W}/good.cif --snr nan", "snr"),
        ("infill", f"--template {W}/good.cif --sites 99 --allow K", "site"),
        ("infill", f"--template {W}/good.cif --sites x --allow K", "--sites"),
        ("infill", f"--template {W}/good.cif --element Na --allow Xx", "Xx"),
        ("design", "--target heat_ref=min --beta nan", "inverse temperatures"),
        ("design", "--target heat_ref=min --beta -1", "inverse temperatures"),
        ("design", "--target heat_ref=min --beta-start inf", "inverse temperatures"),
        ("design", "--target heat_ref=min --energy-sigma nan", "--energy-sigma"),
        ("design", "--target heat_ref=min --space-group x", "--space-group"),
        ("design", "--target heat_ref=min --n 0", "--n"), ("design", "--target heat_ref=min --steps -1", "--steps"),
        ("design", "--target nonsense", "nonsense"), ("design", "--target band_gap=abc", "band_gap"),
        ("design", "--target heat_ref=min --device bogus", "bogus"),
        ("design", "--target heat_ref=min --atoms 9-3", "--atoms"),
        ("data", f"prepare --cif {W}/good.cif --symprec nan", "symprec"),
        ("data", f"prepare --cif {W}/good.cif --symprec 0", "symprec"),
        ("data", f"prepare --cif {W}/good.cif --angle-tolerance nan", "angle_tolerance"),
        ("finetune", "--target heat_ref=min --lr nan", "lr"),
        ("finetune", "--target heat_ref=min --temperature nan", "temperature"),
        ("finetune", "--target heat_ref=min --batch-size 1", "batch_size"),
        ("finetune", "--target heat_ref=min --device bogus", "bogus"),
    ]
    for i, (cmd, extra, phrase) in enumerate(bad):
        quiet = [] if cmd in ("refine", "finetune", "data") else [Q]
        cases.append(_c(f"{cmd}-option-{i}", "options", [cmd, *extra.split(), *OUT.split(), *quiet], 2, phrase,
                        "no_out"))
    return cases


def _train_cases() -> list[Case]:
    data = f"--data {W}/good.csv --cache-dir {W}/cache"
    return [
        _c("train-yaml-python-tag", "train", f"train {data} {OUT} --config {W}/evil.yaml", 2, "not plain YAML",
           "not_executed"),
        _c("train-yaml-broken", "train", f"train {data} {OUT} --config {W}/broken.yaml", 2, "not plain YAML"),
        _c("train-yaml-list", "train", f"train {data} {OUT} --config {W}/list.yaml", 2, "mapping"),
        _c("train-yaml-unknown-field", "train", f"train {data} {OUT} --config {W}/unknown.yaml", 2, "no_such_field"),
        _c("train-yaml-latin1", "train", f"train {data} {OUT} --config {W}/latin1.yaml", 2, "UTF-8"),
        _c("train-set-unknown", "train", f"train {data} {OUT} --set bogus=1", 2, "bogus"),
        _c("train-set-bad-type", "train", f"train {data} {OUT} --set max_epochs=abc", 2, "max_epochs"),
        _c("train-time-budget-nan", "train", f"train {data} {OUT} --time-budget nan", 2, "--time-budget"),
        _c("train-missing-data", "train", f"train --data {W}/nope.csv {OUT}", 2, "nope.csv"),
        _c("train-init-missing", "train", f"train {data} {OUT} --init {W}/nope", 2, "nope"),
        _c("train-resume-hostile-pickle", "train", f"train --resume --out {W}/evil_run", 2, "last.ckpt",
           "not_executed"),
        _c("train-resume-truncated", "train", f"train --resume --out {W}/truncated_run", 2, "last.ckpt"),
        _c("train-resume-garbage-run-json", "train", f"train --resume --out {W}/garbage_run", 2, "run.json"),
        _c("train-resume-no-checkpoint", "train", f"train --resume --out {W}/empty_run", 2, "last.ckpt"),
        _c("train-resume-nothing", "train", f"train --resume --out {W}/nope_run", 2, "nope_run"),
        _c("train-refiner-resume-hostile", "train", f"train-refiner --resume --out {W}/evil_run", 2, "evil_run"),
    ]


def _output_cases() -> list[Case]:
    return [
        _c("out-not-ours-overwrite", "output", f"sample --n 1 --out {W}/victim --overwrite {Q}", 2,
           "not a crystalformer output", "victim_intact"),
        _c("out-not-empty", "output", f"sample --n 1 --out {W}/victim {Q}", 2, "not empty", "victim_intact"),
        _c("out-symlink", "output", f"sample --n 1 --out {W}/link_out {Q}", 2, "symbolic link"),
        _c("out-file", "output", f"sample --n 1 --out {W}/a_file.txt {Q}", 2, "not a folder"),
        _c("out-empty-name", "output", ["sample", "--n", "1", "--out", "", Q], 2, "--out is empty"),
        _c("out-home-overwrite", "output", f"sample --n 1 --out ~ --overwrite {Q}", 2, "home", "home_intact"),
        _c("out-readonly", "output", f"sample --n 1 --out {W}/readonly/x {Q}", 1, "readonly", needs_nonroot=True),
        _c("evaluate-json-new-folder", "output",
           f"evaluate generation --samples {W}/mixed_cifs --reference {W}/good.csv --json {W}/out/new/deep/x.json "
           f"--no-report {Q}", 0, "", "json_deep"),
        _c("sample-ok-then-overwrite", "output", f"sample --n 2 {OUT} {Q}", 0, "CIFs", "cifs=2"),
        # last: code that replaced the working folder would take the workspace with it
        _c("out-cwd-overwrite", "output", f"sample --n 1 --out . --overwrite {Q}", 2, "current, home or root",
           "home_intact"),
    ]


CASES: list[Case] = _cif_cases() + _csv_cases() + _model_cases() + _option_cases() + _train_cases() + _output_cases()


# ---------------------------------------------------------------------- running and judging
def expand(case: Case, ws: Path) -> list[str]:
    home = str(ws / "home")  # a stand-in home folder: the runs get HOME set to it
    return [a.replace("{ws}", str(ws)).replace("{id}", case.id).replace("~", home) for a in case.argv]


def check_outcome(case: Case, ws: Path) -> str | None:
    """None when the case's post-condition holds, else what is wrong."""
    out = ws / "out" / case.id
    check = case.check or ""
    if (ws / "EXECUTED").exists():  # cases run one at a time: this one did it
        (ws / "EXECUTED").unlink()
        return "a hostile input executed code"
    if list((ws / "out").glob(f".{case.id}.tmp*")):
        return "a temporary folder was left behind"
    if check == "no_out" and out.exists():
        return f"{out} was written although the command failed"
    if check.startswith("cifs"):
        n = len(list(out.glob("*.cif"))) if out.is_dir() else 0
        want = int(check.split("=")[-1])
        if (check.startswith("cifs>=") and n < want) or (check.startswith("cifs=") and n != want):
            return f"{n} CIFs written, expected {check[4:]}"
    if check.startswith("kept="):
        meta = out / "meta.json"
        if not meta.is_file():
            return "no prepared data written"
        counts = json.loads(meta.read_text())["counts"]
        if counts["kept"] != int(check.split("=")[1]) or counts["kept"] + sum(counts["skipped"].values()) \
                != counts["total"]:
            return f"kept {counts['kept']} of {counts['total']}, skipped {counts['skipped']}"
    if not (ws / "home" / "notes.txt").is_file():
        return "the home folder was deleted"
    if check == "victim_intact" and not (ws / "victim" / "thesis.tex").is_file():
        return "the user's folder was deleted"
    if check == "json" and not (ws / "out" / "eval" / "x.json").is_file():
        return "no JSON report"
    if check == "json_deep" and not (ws / "out" / "new" / "deep" / "x.json").is_file():
        return "no JSON report in the new folder"
    if check == "trained" and not (out / "model" / "model.safetensors").is_file():
        return "no model written"
    return None


@dataclass
class Outcome:
    id: str
    group: str
    verdict: str  # clear, handled, crash, traceback, wrong, hang, skipped
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def judge(case: Case, code: int | None, stdout: str, stderr: str, ws: Path, seconds: float) -> Outcome:
    o = Outcome(case.id, case.group, "", seconds=round(seconds, 2))
    text = stdout + stderr
    if code is None:
        o.verdict, o.detail = "hang", "time limit"
    elif code < 0:
        o.verdict, o.detail = "crash", f"signal {-code}"
    elif "unrecognized arguments" in stderr:  # the option does not exist: the case tests nothing
        o.verdict, o.detail = "wrong", stderr.strip().splitlines()[-1][:200]
    elif "Traceback (most recent call last)" in stderr and case.argv[0] != "python":
        o.verdict, o.detail = "traceback", stderr.strip().splitlines()[-1][:200]
    elif code != case.code:
        o.verdict, o.detail = "wrong", f"exit {code}, expected {case.code}: {text.strip()[-200:]}"
    else:
        problem = check_outcome(case, ws)
        if case.code == 0:
            if problem is None and case.phrase.lower() in text.lower():
                o.verdict = "handled"
            else:
                o.verdict, o.detail = "wrong", problem or f"{case.phrase!r} not in the output"
        else:
            if case.argv[0] == "python":
                line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
                ok = case.phrase.lower() in line.lower() and "Error" in line
            else:
                lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("crystalformer: error:")]
                line = lines[0] if lines else ""
                ok = len(lines) == 1 and case.phrase.lower() in line.lower()
            if ok and problem is None:
                o.verdict, o.detail = "clear", line[:200]
            else:
                o.verdict, o.detail = "wrong", problem or f"message {line or stderr.strip()[-200:]!r} lacks {case.phrase!r}"
    return o


def run_case(case: Case, ws: Path, timeout: float) -> Outcome:
    if case.needs_nonroot and os.geteuid() == 0:
        return Outcome(case.id, case.group, "skipped", "root ignores file permissions")
    argv = expand(case, ws)
    cmd = [sys.executable, "-c", argv[1]] if argv[0] == "python" else [sys.executable, "-m", "crystalformer", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HOME": str(ws / "home")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ws, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        code = None
    return judge(case, code, stdout, stderr, ws, time.perf_counter() - t0)


def signal_cases(ws: Path) -> list[Outcome]:
    """Interrupting and racing writers: SIGINT while writing, a second writer on the same folder."""
    outcomes = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "crystalformer", "sample", "--n", "3000", "--quiet"]
    for sig, name in ((signal.SIGINT, "sigint-while-writing"), (signal.SIGTERM, "sigterm-while-writing")):
        out = ws / "out" / name
        proc = subprocess.Popen([*base, "--out", str(out)], cwd=ws, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and not list((ws / "out").glob(f".{name}.tmp*/*.cif")):
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        left = [p.name for p in (ws / "out").glob(f".{name}*")]
        ok = not left and not out.exists() and proc.returncode in (130, 143, -sig)
        outcomes.append(Outcome(name, "signal", "handled" if ok else "wrong",
                                "" if ok else f"exit {proc.returncode}, left {left}, out exists {out.exists()}"))
    out = ws / "out" / "race"
    first = subprocess.Popen([*base[:-2], "1500", "--quiet", "--out", str(out)], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    second = subprocess.run([*base[:-2], "2", "--quiet", "--out", str(out)], cwd=ws, env=env, capture_output=True,
                            text=True)
    first.communicate(timeout=600)
    ok = second.returncode == 2 and "being written by another process" in second.stderr and first.returncode == 0
    outcomes.append(Outcome("second-writer-refused", "signal", "handled" if ok else "wrong",
                            "" if ok else f"second exit {second.returncode}: {second.stderr.strip()[-200:]}"))
    return outcomes


def summarize(outcomes: list[Outcome]) -> list[dict]:
    groups = sorted({o.group for o in outcomes}) + ["all"]
    rows = []
    for g in groups:
        sel = [o for o in outcomes if g in ("all", o.group) and o.verdict != "skipped"]
        count = {v: sum(o.verdict == v for o in sel) for v in ("clear", "handled", "crash", "traceback", "wrong", "hang")}
        rows.append({"group": g, "cases": len(sel), **count,
                     "ok %": round(100 * (count["clear"] + count["handled"]) / len(sel), 1) if sel else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("hostile.json"))
    parser.add_argument("--only", action="append", help="groups to run (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--no-signals", action="store_true", help="skip the interrupt and race cases")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        ws = Path(tmp) / "ws"
        build_workspace(ws)
        (ws / "out").mkdir()
        cases = [c for c in CASES if not args.only or c.group in args.only]
        outcomes = [run_case(c, ws, args.timeout) for c in tqdm(cases, desc="cases", unit="case")]
        if not args.no_signals and (not args.only or "signal" in args.only):
            outcomes += signal_cases(ws)
        (ws / "readonly").chmod(0o755)
    rows = summarize(outcomes)
    cols = ["group", "cases", "clear", "handled", "crash", "traceback", "wrong", "hang", "ok %"]
    print(" ".join(f"{c:>9}" for c in cols))
    for r in rows:
        print(" ".join(f"{str(r[c]):>9}" for c in cols))
    for o in outcomes:
        if o.verdict not in ("clear", "handled", "skipped"):
            print(f"  {o.verdict:<9} {o.id}: {o.detail}")
    skipped = [o.id for o in outcomes if o.verdict == "skipped"]
    if skipped:
        print(f"  skipped: {', '.join(skipped)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": rows, "machine": os.uname().nodename,
                                     "outcomes": [vars(o) for o in outcomes]}, indent=1))
    print(f"report written to {args.json}")
    return 0 if all(o.verdict in ("clear", "handled", "skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
