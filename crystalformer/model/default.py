"""The generative model shipped inside the package (``crystalformer/_default/model/``)."""

from __future__ import annotations

from pathlib import Path

from ..defaults import default_dir


def default_model_dir() -> Path:
    """The embedded default model directory; FileNotFoundError naming what to do when it is absent."""
    return default_dir("model")
