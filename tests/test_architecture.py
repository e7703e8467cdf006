"""Module boundaries and the public API, checked from the source (an import graph built with ast)."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "crystalformer"
# the one import that runs from a lower module to a higher one: CrystalFormer.save writes through model/files.py
ALLOWED_UPWARD = {("crystalformer.model.crystalformer", "crystalformer.model.files")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[tuple[str, tuple[str, ...], bool]]:
    """(imported module, imported names, at module level?) of every import in one file, TYPE_CHECKING blocks excluded."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        top = node in tree.body
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    out.add((sub, (), top))
                elif base in modules:
                    out.add((base, (alias.name,), top))
        elif isinstance(node, ast.Import):
            out.update((a.name, (), top) for a in node.names if a.name in modules)
    return out


def _graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Elementary cycles through each module's strongly connected component (Tarjan), as member lists."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_except_the_allowed_upward_import():
    graph = _graph()
    edges = {m: {t for t, _, _ in imps if t != m and not m.startswith(t + ".") and not t.startswith(m + ".")}
             for m, imps in graph.items()}
    for low, high in ALLOWED_UPWARD:
        edges[low].discard(high)
    assert _cycles(edges) == []


def test_no_private_names_imported_across_modules():
    bad = [f"{m} imports {t}.{n}" for m, imps in _graph().items() for t, names, _ in imps for n in names
           if n.startswith("_") and not n.startswith("__") and t != m]
    assert bad == []


def test_no_module_getattr_re_exports_below_the_package():
    """Only the top-level package resolves names lazily (so that the command line starts fast)."""
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"
                 and any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(p.read_text()).body)]
    assert offenders == []


def test_the_model_never_imports_lightning():
    code = ("import sys, crystalformer.model, crystalformer.model.batching, crystalformer.sampling.api;"
            "print('lightning' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_every_public_name_imports_with_a_real_signature():
    import crystalformer

    assert (PACKAGE / "py.typed").is_file()
    for name in crystalformer.__all__:
        value = getattr(crystalformer, name)
        assert value is not None, name
        if inspect.isfunction(value):
            params = inspect.signature(value).parameters.values()
            assert not any(p.kind is p.VAR_KEYWORD for p in params), f"{name} takes **kwargs"
    for name in ("sample", "predict_structure", "infill", "refine", "design", "evaluate_generation", "evaluate_csp",
                 "load_model", "Crystal"):
        assert name in crystalformer.__all__
    # a sub-package imported later does not shadow a function of the same name
    importlib.import_module("crystalformer.refinement.api")
    importlib.import_module("crystalformer.inverse.api")
    assert inspect.isfunction(crystalformer.refine) and inspect.isfunction(crystalformer.design)


def test_type_checking_block_names_every_export():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    declared = {a.asname or a.name for n in block.body if isinstance(n, ast.ImportFrom) for a in n.names}
    import crystalformer

    assert declared == set(crystalformer.__all__) - {"__version__"}


def test_sample_names_its_failure_reason():
    from crystalformer.sampling.api import Sample, SampleSet

    s = SampleSet([Sample(None, -1.0, error="too_close: atoms 0.2 Å apart", reason="too_close"),
                   Sample(None, -2.0, error="invalid: odd", reason="invalid")])
    assert s.failures() == {"too_close": 1, "invalid": 1}


@pytest.mark.parametrize("flag", ["--version"])
def test_version_flag(flag, capsys):
    from crystalformer import __version__
    from crystalformer.cli import main

    with pytest.raises(SystemExit) as done:
        main([flag])
    assert done.value.code == 0 and __version__ in capsys.readouterr().out


def test_one_learning_rate_schedule_for_every_trainer():
    """The generator, refiner and property trainers all call schedule.warmup_cosine (and nothing else defines one)."""
    import math

    from crystalformer.schedule import warmup_cosine

    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1) and warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0) and warmup_cosine(100, 100, 10, 0.05) == pytest.approx(0.05)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    users = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "warmup_cosine(" in p.read_text()]
    assert sorted(users) == ["inverse/train.py", "lit.py", "refinement/lit.py", "schedule.py"]
    cosines = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if "math.cos(math.pi" in p.read_text() and p.name != "schedule.py"]
    assert cosines == []
