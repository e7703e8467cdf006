"""Generator model directories (:data:`crystalformer.artifacts.MODEL`): ``config.json`` +
``model.safetensors`` + ``tokenizer.json`` + ``metadata.json``, read and written by
:mod:`crystalformer.artifacts` like every other model directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..artifacts import MODEL, read_artifact, read_metadata, write_artifact
from ..config import ModelConfig, config_from_dict, config_to_dict

__all__ = ["cumulative_train_s", "load_model", "read_config", "read_metadata", "save_model"]


def save_model(model, path, metadata: dict | None = None) -> Path:
    """Write ``model`` (a CrystalFormer) as a model directory at ``path`` (replaced if it exists)."""
    return write_artifact(path, MODEL, config_to_dict(model.config), model, model.tokenizer,
                          {"num_parameters": model.num_parameters(), **(metadata or {})})


def load_model(path=None, device="cpu"):
    """The CrystalFormer stored in a model directory (see :func:`save_model`), in eval mode.

    Without ``path``, the default model shipped inside the package; a shipped model's name
    (``"mp_20"``, ``"perov_5"``, ``"carbon_24"``: see ``crystalformer models``) loads that one.
    """
    from ..defaults import resolve_model
    from .crystalformer import CrystalFormer

    artifact = read_artifact(resolve_model(path), MODEL)
    config = _model_config(artifact)
    _check_size(artifact, config)
    return artifact.load_into(CrystalFormer(config, artifact.tokenizer), device)


def _check_size(artifact, config: ModelConfig) -> None:
    """Refuse, before allocating anything, a config.json far larger than the weights it sits beside.

    A transformer of this shape has at least n_layer * 4 * d_model^2 weights (attention) plus its
    embeddings; a corrupted or hand-edited config (``d_model: 262144``) would otherwise try to
    allocate hundreds of GB before the weights are even read.
    """
    stored = artifact.weight_count()
    least = config.n_layer * 4 * config.d_model ** 2 + (config.vocab_size + config.max_len) * config.d_model
    if least > 2 * stored:
        raise ValueError(f"{artifact.path / 'config.json'} describes a model of at least {least:,} weights but "
                         f"model.safetensors holds {stored:,}: the folder is inconsistent (was config.json edited?)")


def read_config(path) -> ModelConfig:
    """The ModelConfig of a model directory (checked like :func:`load_model` checks it)."""
    return _model_config(read_artifact(Path(path), MODEL))


def _model_config(artifact) -> ModelConfig:
    f, fields = artifact.path / "config.json", artifact.config
    for field in dataclasses.fields(ModelConfig):
        value = fields.get(field.name)
        want = {"int": int, "float": (int, float)}.get(str(field.type))
        if value is not None and want and (isinstance(value, bool) or not isinstance(value, want)):
            raise ValueError(f"{f}: model.{field.name} must be a number ({field.type}), got {value!r}")
    try:
        return config_from_dict(ModelConfig, fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{f}: {err}") from None


def cumulative_train_s(metadata: dict) -> float:
    """Training wall time of a model directory's weights, summed over every run they descend from."""
    own = float(metadata.get("train_wall_s") or 0.0)
    return own + sum(float(step.get("train_wall_s") or 0.0) for step in metadata.get("lineage", []))
