"""Model directories: ``config.json`` + ``model.safetensors`` + ``tokenizer.json`` + ``metadata.json``.

Nothing in a model directory is unpickled: weights are safetensors, everything else is JSON.
Writes go to a temporary sibling directory that replaces the target at the end, so a crash
never leaves a half-written model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..atomic import swap_into_place, temporary_sibling
from ..config import ModelConfig, config_from_dict, config_to_dict

FORMAT = "crystalformer-model"
FORMAT_VERSION = 1
FILES = ("config.json", "model.safetensors", "tokenizer.json", "metadata.json")


def save_model(model, path, metadata: dict | None = None) -> Path:
    """Write ``model`` (a CrystalFormer) as a model directory at ``path`` (replaced if it exists)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = temporary_sibling(path)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config_to_dict(model.config)}
    _write_json(tmp / "config.json", config)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    model.tokenizer.save(tmp)
    _write_json(tmp / "metadata.json", {"num_parameters": model.num_parameters(), **(metadata or {})})
    swap_into_place(tmp, path)
    return path


def load_model(path=None, device="cpu"):
    """The CrystalFormer stored in a model directory (see :func:`save_model`), in eval mode.

    Without ``path``, the default model shipped inside the package; a shipped model's name
    (``"mp_20"``, ``"perov_5"``, ``"carbon_24"``: see ``crystalformer models``) loads that one.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..defaults import resolve_model
    from ..tokenizer import CrystalTokenizer
    from .crystalformer import CrystalFormer

    path = resolve_model(path)
    missing = [name for name in FILES[:3] if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a crystalformer model directory: missing {', '.join(missing)}")
    config = read_config(path)
    tokenizer = CrystalTokenizer.load(path)
    _check_size(path, config)
    model = CrystalFormer(config, tokenizer)
    try:
        state = load_file(str(path / "model.safetensors"), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path / 'model.safetensors'}: cannot read the weights ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path / 'model.safetensors'} does not fit the model in config.json: {err}") from None
    return model.to(device).eval()


def _check_size(path: Path, config: ModelConfig) -> None:
    """Refuse, before allocating anything, a config.json far larger than the weights it sits beside.

    A transformer of this shape has at least n_layer * 4 * d_model^2 weights (attention) plus its
    embeddings; a corrupted or hand-edited config (``d_model: 262144``) would otherwise try to
    allocate hundreds of GB before the weights are even read.
    """
    from safetensors import SafetensorError, safe_open

    f = path / "model.safetensors"
    try:
        with safe_open(str(f), "pt") as weights:
            stored = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{f}: cannot read the weights ({err})") from None
    least = config.n_layer * 4 * config.d_model ** 2 + (config.vocab_size + config.max_len) * config.d_model
    if least > 2 * stored:
        raise ValueError(f"{path / 'config.json'} describes a model of at least {least:,} weights but "
                         f"{f.name} holds {stored:,}: the folder is inconsistent (was config.json edited?)")


def read_config(path) -> ModelConfig:
    path = Path(path)
    f = path / "config.json"
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{f} is not valid JSON: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{f}: cannot read it ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{f} is not a crystalformer model config (a JSON object is expected)")
    if data.get("format") != FORMAT:
        raise ValueError(f"{path / 'config.json'} is not a crystalformer model config (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has model format {data.get('format_version')}; this package reads {FORMAT_VERSION}")
    fields = data.get("model")
    if not isinstance(fields, dict):
        raise ValueError(f"{f} has no \"model\" section: the folder is incomplete or not a model")
    for field in dataclasses.fields(ModelConfig):
        value = fields.get(field.name)
        want = {"int": int, "float": (int, float)}.get(str(field.type))
        if value is not None and want and (isinstance(value, bool) or not isinstance(value, want)):
            raise ValueError(f"{f}: model.{field.name} must be a number ({field.type}), got {value!r}")
    try:
        return config_from_dict(ModelConfig, fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{f}: {err}") from None


def read_metadata(path) -> dict:
    f = Path(path) / "metadata.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def cumulative_train_s(metadata: dict) -> float:
    """Training wall time of a model directory's weights, summed over every run they descend from."""
    own = float(metadata.get("train_wall_s") or 0.0)
    return own + sum(float(step.get("train_wall_s") or 0.0) for step in metadata.get("lineage", []))


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
