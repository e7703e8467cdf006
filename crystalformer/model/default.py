"""The model shipped inside the package (``crystalformer/_default_model/``), used when no path is given."""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "_default_model"


def default_model_dir() -> Path:
    """The embedded default model directory; FileNotFoundError naming what to do when it is absent."""
    if not (DEFAULT_DIR / "config.json").is_file():
        raise FileNotFoundError(f"no default model is installed at {DEFAULT_DIR}; pass a model directory "
                                "(--model DIR, or load_model(DIR)) trained with `crystalformer train`")
    return DEFAULT_DIR
