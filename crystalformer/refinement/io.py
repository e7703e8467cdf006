"""Refiner model directories (:data:`crystalformer.artifacts.REFINER`): config, safetensors weights, metadata."""

from __future__ import annotations

from pathlib import Path

from ..artifacts import REFINER, read_artifact, read_metadata, write_artifact
from .config import RefinerConfig
from .model import Refiner

__all__ = ["load_refiner", "read_metadata", "save_refiner"]


def save_refiner(refiner: Refiner, path, metadata: dict | None = None) -> Path:
    """Write the directory atomically (temp dir + os.replace); an existing one is replaced."""
    return write_artifact(path, REFINER, refiner.config.to_dict(), refiner, metadata=metadata)


def load_refiner(path, device="cpu") -> Refiner:
    """Rebuild a refiner from its directory (safetensors weights only; never unpickles).

    Directories written before the common artifact layout (format ``crystalformer-refiner/2``,
    config fields at the top level) load too.
    """
    artifact = read_artifact(Path(path), REFINER)
    try:
        config = RefinerConfig.from_dict(dict(artifact.config))
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{artifact.path / 'config.json'}: {err}") from None
    return artifact.load_into(Refiner(config), device)
