"""The models shipped inside the package, used wherever no path is given.

``crystalformer/_default/`` holds one directory per kind:

- ``model/``     the default generative CrystalFormer, for real materials (trained on mp_20 + mpts_52;
  ``load_model()``, ``crystalformer sample`` without ``--model``, or ``--model mp_20``);
- ``models/<name>/``  benchmark generative models trained on one data set each (``--model perov_5``,
  ``--model carbon_24``); :func:`shipped_models` lists every name;
- ``refiner/``   the position refiner (``--refine`` without a path, ``crystalformer refine`` without ``--model``);
- ``refiners/<name>/``  other shipped refiners, chosen by name (``--refine pairs``: the all-pairs
  network, better than the default on carbon_24 CSP); :func:`shipped_refiners` lists every name;
- ``property/<target>/``  property models p(y | X), one per target column (``crystalformer design``
  without ``--property``).

``MODEL_CARD.md`` in the same folder records their data, sizes, training commands and figures.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent / "_default"
KINDS = {"model": "generative model", "refiner": "position refiner", "property": "property model"}


def default_dir(kind: str, name: str | None = None) -> Path:
    """The shipped directory of ``kind`` (and, for property models, of target ``name``).

    FileNotFoundError names what is missing and what to pass instead.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    path = ROOT / kind if name is None else ROOT / kind / name
    if not (path / "config.json").is_file():
        what = KINDS[kind] + (f" for {name!r}" if name else "")
        hint = {"model": "--model DIR (or load_model(DIR)), trained with `crystalformer train`",
                "refiner": "--refine DIR, trained with `crystalformer train-refiner`",
                "property": "--property DIR, trained with `crystalformer train-property`"}[kind]
        have = f" (shipped property models: {', '.join(shipped(kind)) or 'none'})" if kind == "property" and name else ""
        raise FileNotFoundError(f"no default {what} is installed at {path}{have}; pass {hint}")
    return path


DEFAULT_MODEL = "mp_20"


def _named(default_name: str, default_folder: str, others_folder: str) -> dict[str, Path]:
    """``{name: directory}``: the default under ``default_name``, then every folder of ``others_folder``."""
    out = {default_name: ROOT / default_folder} if (ROOT / default_folder / "config.json").is_file() else {}
    base = ROOT / others_folder
    if base.is_dir():
        out.update({p.name: p for p in sorted(base.iterdir()) if (p / "config.json").is_file()})
    return out


def shipped_models() -> dict[str, Path]:
    """``{name: directory}`` of the shipped generative models; the default is named ``mp_20``."""
    return _named(DEFAULT_MODEL, "model", "models")


DEFAULT_REFINER = "sites"


def shipped_refiners() -> dict[str, Path]:
    """``{name: directory}`` of the shipped refiners; the default is named ``sites``."""
    return _named(DEFAULT_REFINER, "refiner", "refiners")


def resolve_refiner(name_or_path) -> Path:
    """The refiner directory meant by ``name_or_path``: None (or ``default``) gives the default
    refiner, a refiner directory is itself, a shipped refiner's name (``sites``, ``pairs``) its directory.

    FileNotFoundError names the shipped refiners when it is neither.
    """
    if name_or_path is None or str(name_or_path) == "default":
        return default_dir("refiner")
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    refiners = shipped_refiners()
    if str(name_or_path) in refiners:
        return refiners[str(name_or_path)]
    raise FileNotFoundError(f"{name_or_path}: no such refiner folder and no shipped refiner of that name "
                            f"(shipped: {', '.join(refiners) or 'none'})")


def resolve_model(name_or_path) -> Path:
    """The model directory meant by ``name_or_path``: None gives the default model, a model directory
    is itself, a shipped model's name (``mp_20``, ``perov_5``, ...) its directory.

    FileNotFoundError names the shipped models when it is neither.
    """
    if name_or_path is None:
        return default_dir("model")
    path = Path(name_or_path)
    if (path / "config.json").is_file():  # a model directory, even one named like a shipped model
        return path
    models = shipped_models()
    if str(name_or_path) in models:  # a shipped name (also when a data folder of that name is here)
        return models[str(name_or_path)]
    if path.exists():
        return path  # not a model directory: loading it names what is missing
    raise FileNotFoundError(f"{name_or_path}: no such model directory and no shipped model of that name "
                            f"(shipped: {', '.join(models) or 'none'}; `crystalformer models` lists them)")


def shipped(kind: str) -> list[str]:
    """Names of the shipped property models, or [kind] when the single model of ``kind`` is present."""
    base = ROOT / kind
    if kind == "property":
        return sorted(p.name for p in base.iterdir() if (p / "config.json").is_file()) if base.is_dir() else []
    return [kind] if (base / "config.json").is_file() else []
