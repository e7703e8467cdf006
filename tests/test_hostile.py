"""The hostile-input corpus (scripts/hostile_corpus.py), run in-process: every case is a clear
one-line error or is handled, with its output checked. The slow cases (training, potentials)
and the interrupt / race cases run with ``-m slow`` and in the script, one process per case."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from crystalformer.atomic import release_all
from crystalformer.cli import main

_spec = importlib.util.spec_from_file_location("hostile_corpus",
                                               Path(__file__).resolve().parents[1] / "scripts" / "hostile_corpus.py")
corpus = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("hostile_corpus", corpus)
_spec.loader.exec_module(corpus)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("hostile") / "ws"
    corpus.build_workspace(ws)
    (ws / "out").mkdir()
    yield ws
    (ws / "readonly").chmod(0o755)


def _run_in_process(case, ws, capsys, monkeypatch):
    monkeypatch.chdir(ws)
    monkeypatch.setenv("HOME", str(ws / "home"))  # "~" in a case is this stand-in
    argv = corpus.expand(case, ws)
    if argv[0] == "python":
        try:
            exec(compile(argv[1], case.id, "exec"), {})
            code, err = 0, ""
        except Exception as exc:  # the snippet's error is the message judged
            code, err = 1, f"{type(exc).__name__}: {exc}"
        out = ""
    else:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        finally:
            release_all()
        captured = capsys.readouterr()
        out, err = captured.out, captured.err
    return code, out, err


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in corpus.CASES])
def test_hostile_case(case, workspace, capsys, monkeypatch):
    if case.needs_nonroot and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    code, out, err = _run_in_process(case, workspace, capsys, monkeypatch)
    outcome = corpus.judge(case, code, out, err, workspace, 0.0)
    assert outcome.verdict in ("clear", "handled"), f"{outcome.verdict}: {outcome.detail}"


def test_the_corpus_covers_every_kind_of_fault():
    groups = {c.group for c in corpus.CASES}
    assert groups >= {"cif", "csv", "model", "options", "train", "output"}
    assert len({c.id for c in corpus.CASES}) == len(corpus.CASES)  # ids name output folders: unique


@pytest.mark.slow
def test_interrupts_and_a_second_writer(workspace):
    outcomes = corpus.signal_cases(workspace)
    assert all(o.verdict == "handled" for o in outcomes), [(o.id, o.detail) for o in outcomes]
