"""Every crystalformer command the README and the notebooks show parses with today's CLI, the
docs name no file a user does not have, and the quick ones run end to end."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from crystalformer.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in joined.splitlines():
            for part in line.split("&&"):
                part = part.split(" # ")[0].strip()
                if part.startswith("crystalformer "):
                    commands.append(part)
    return commands


def _notebook_commands() -> list[str]:
    commands = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for snippet in re.findall(r"`(crystalformer [^`]+)`", "".join(cell["source"])):
                if "--" in snippet:  # a command, not a command's name in prose
                    commands.append(snippet)
    return commands


DOCUMENTED = _readme_commands() + _notebook_commands()


def test_the_docs_show_commands():
    assert len(_readme_commands()) >= 20 and len(_notebook_commands()) >= 4


@pytest.mark.parametrize("command", DOCUMENTED)
def test_documented_command_parses(command):
    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse refused it: the docs show an option that does not exist
        pytest.fail(f"{command!r} does not parse (exit {exc.code})")
    assert callable(args.func)


def test_docs_name_no_development_paths():
    """A user has no ../shared or DESIGN.md: the docs and the help texts must not send them there."""
    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts.update({p.name: p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb")})
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "crystalformer").rglob("*.py")})
    offenders = [name for name, text in texts.items() if "../shared" in text or "DESIGN.md" in text]
    assert not offenders, offenders


def test_readme_quick_commands_run(tmp_path, monkeypatch, capsys):
    """The first commands a newcomer copies (small n): sample, csp, infill."""
    from crystalformer.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "SrTiO3.cif").write_text(_srtio3_cif())
    for command in ("crystalformer sample --n 4 --out samples/",
                    "crystalformer csp --composition SrTiO3 --n 3 --out csp/",
                    "crystalformer infill --template SrTiO3.cif --element Sr --allow Ca,Sr,Ba --out subs/"):
        assert command.split(" --n")[0].split(" --out")[0] in " ".join(DOCUMENTED)
        assert main([*shlex.split(command)[1:], "--quiet"]) == 0, command
    out = capsys.readouterr().out
    assert out.count("next:") == 3


def _srtio3_cif() -> str:
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])
    return s.to(fmt="cif")
