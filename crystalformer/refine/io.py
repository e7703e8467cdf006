"""Refiner model directories: ``config.json``, ``model.safetensors``, ``metadata.json`` (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import swap_into_place, temporary_sibling
from .config import RefinerConfig
from .model import Refiner

FORMAT = "crystalformer-refiner/2"  # 2: the network predicts the normalized score (bond features, pair forces)


def save_refiner(refiner: Refiner, path, metadata: dict | None = None) -> Path:
    """Write the directory atomically (temp dir + os.replace); an existing one is replaced."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = temporary_sibling(path)
    state = {k: v.detach().cpu().contiguous() for k, v in refiner.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **refiner.config.to_dict()}, indent=2))
    (tmp / "metadata.json").write_text(json.dumps(metadata or {}, indent=2, default=str))
    swap_into_place(tmp, path)
    return path


def load_refiner(path, device="cpu") -> Refiner:
    """Rebuild a refiner from its directory (safetensors weights only; never unpickles)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} is not a refiner model directory (needs config.json and model.safetensors)")
    raw = json.loads(cfg_file.read_text())
    found = raw.pop("format", None)
    if found == "crystalformer-refiner/1":
        raise ValueError(f"{cfg_file}: a refiner of format 1, written before the score network changed "
                         f"(format 2 predicts the normalized score); retrain it with `crystalformer train-refiner`")
    if found != FORMAT:
        raise ValueError(f"{cfg_file}: not a refiner config (format {found!r}, expected {FORMAT!r})")
    refiner = Refiner(RefinerConfig.from_dict(raw))
    refiner.load_state_dict(load_file(str(path / "model.safetensors")))
    return refiner.to(device).eval()


def read_metadata(path) -> dict:
    f = Path(path) / "metadata.json"
    return json.loads(f.read_text()) if f.is_file() else {}
