"""Typed configurations of the model and its training, with named presets.

Both dataclasses are stored in every checkpoint and model directory (``config.json``), so a
model is rebuilt from its files alone. ``ModelConfig.from_name("small")`` /
``TrainConfig.from_name("small")`` give the presets; :func:`apply_overrides` applies a flat or
nested mapping (from YAML or the command line) and rejects unknown fields by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

from .grammar import DEFAULT_N_MAX


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the transformer and its heads."""

    vocab_size: int = 632
    """Size of the tokenizer's vocabulary (checked against ``tokenizer.json`` on load)."""
    max_len: int = 512
    """Longest token stream (learned positions). MP-20 streams are under ~120 tokens; 64 sites
    with three free coordinates each and a prompt need ~400."""
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 0
    """Feed-forward width; 0 means 4 * d_model."""
    dropout: float = 0.0
    n_fourier: int = 8
    """Fourier frequencies k = 1..n_fourier of sin/cos(2 pi k x) for fractional coordinates."""
    n_mix_coord: int = 16
    """Von Mises components per free fractional coordinate."""
    n_mix_lattice: int = 8
    """Gaussian components per free lattice parameter (of log length / scaled angle)."""
    n_max: int = DEFAULT_N_MAX
    """Most Wyckoff sites per crystal; the grammar masks enforce it."""

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        for name in ("vocab_size", "max_len", "n_layer", "n_head", "d_model", "n_fourier", "n_mix_coord",
                     "n_mix_lattice", "n_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_ff < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"need d_ff >= 0 and 0 <= dropout < 1, got {self.d_ff}, {self.dropout}")

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        return dataclasses.replace(_preset(MODEL_PRESETS, name), **overrides)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and logging settings of one training run."""

    batch_size: int = 64
    max_epochs: int = 50
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run ``max_epochs``)."""
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    """Cosine decay from ``lr`` to ``lr * min_lr_ratio`` over the run."""
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    prompt_fraction: float = 0.5
    """Fraction of training examples that carry their composition prompt (serves p(X) and p(X | comp))."""
    seed: int = 0
    num_workers: int = 0
    val_every_epochs: int = 1
    log_every_steps: int = 20
    precision: str = "auto"
    """'auto': bf16 autocast on GPU, float32 on CPU; or any Lightning precision string."""
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    """Lightning strategy, e.g. 'ddp' for several GPUs."""
    num_nodes: int = 1
    """machines taking part (multi-node DDP under torchrun / SLURM)."""
    time_budget_min: float = 0.0
    """Stop after this many minutes of training wall time, summed over resumes (0: no budget).
    With a budget the cosine decay runs over whichever ends first, the budget or ``max_epochs``,
    and the run ends with a validation pass so the best model so far is exported."""
    compile: bool = False
    """``torch.compile`` the transformer blocks (dynamic shapes); pays off on a GPU for long runs."""
    bucket: bool = False
    """Length-bucketed batches: each batch draws streams of similar length (less padding);
    batch order stays random and seeded."""

    def __post_init__(self):
        if self.batch_size < 1 or self.max_epochs < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError(f"need batch_size >= 1, max_epochs >= 1, lr > 0 and warmup_steps >= 0; got "
                             f"{self.batch_size}, {self.max_epochs}, {self.lr}, {self.warmup_steps}")
        if not 0.0 <= self.prompt_fraction <= 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"prompt_fraction and min_lr_ratio must be in [0, 1], got {self.prompt_fraction}, "
                             f"{self.min_lr_ratio}")
        if not self.time_budget_min >= 0 or self.time_budget_min == float("inf"):
            raise ValueError(f"time_budget_min must be a finite number >= 0 (0: none), got {self.time_budget_min}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> TrainConfig:
        return dataclasses.replace(_preset(TRAIN_PRESETS, name), **overrides)


MODEL_PRESETS = {
    # seconds on a laptop: tests and smoke runs
    "tiny": ModelConfig(n_layer=2, n_head=2, d_model=32, n_fourier=4, n_mix_coord=4, n_mix_lattice=2, max_len=256),
    # ~0.8M parameters: CPU, under an hour on ~10k crystals
    "small": ModelConfig(n_layer=4, n_head=4, d_model=128, max_len=256),
    # ~5M parameters: GPU
    "base": ModelConfig(n_layer=8, n_head=8, d_model=224, max_len=512, dropout=0.1),
}

TRAIN_PRESETS = {
    "tiny": TrainConfig(batch_size=16, max_epochs=5, lr=3e-3, warmup_steps=5, log_every_steps=5),
    "small": TrainConfig(batch_size=64, max_epochs=40, lr=1e-3, warmup_steps=200),
    "base": TrainConfig(batch_size=128, max_epochs=200, lr=5e-4, warmup_steps=1000),
}


def _preset(table: dict, name: str):
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(table)}")
    return table[name]


def config_to_dict(config) -> dict:
    return asdict(config)


def config_from_dict(cls, data: dict):
    """Build ``cls`` from a dict, naming any field the class does not have."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**data)


def apply_overrides(model: ModelConfig, train: TrainConfig, overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """Apply ``{"model": {...}, "train": {...}}`` or flat ``{field: value}`` overrides.

    A flat key must name a field of exactly one of the two configs; values are converted to the
    field's type (YAML already gives numbers; the command line gives strings).
    """
    nested = {"model": dict(overrides.get("model", {}) or {}), "train": dict(overrides.get("train", {}) or {})}
    model_fields = {f.name: f for f in fields(ModelConfig)}
    train_fields = {f.name: f for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if key in ("model", "train"):
            continue
        if key in model_fields:
            nested["model"][key] = value
        elif key in train_fields:
            nested["train"][key] = value
        else:
            raise ValueError(f"unknown config field {key!r}; model fields: {sorted(model_fields)}; "
                             f"train fields: {sorted(train_fields)}")
    for part, table in (("model", model_fields), ("train", train_fields)):
        for key in nested[part]:
            if key not in table:
                raise ValueError(f"unknown {part} config field {key!r}; known: {sorted(table)}")
    return override(model, nested["model"]), override(train, nested["train"])


def parse_set(items) -> dict[str, str]:
    """``--set FIELD=VALUE`` items (any number) as {field: value} strings; the one parser of every command."""
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        out[key.strip()] = value.strip()
    return out


def override(config, values: dict):
    """``config`` (a dataclass) with ``values`` (strings from the command line, or YAML values) converted
    to its fields' types; an unknown field is named with the known ones."""
    table = {f.name: f for f in fields(config)}
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise ValueError(f"unknown {type(config).__name__} field(s) {unknown}; known: {sorted(table)}")
    return dataclasses.replace(config, **{k: _convert(table[k], v) for k, v in values.items()})


def _convert(f: dataclasses.Field, value):
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind.endswith("| None"):  # an optional field: "none" / "null" clears it, anything else is the base type
        if isinstance(value, str) and value.strip().lower() in ("none", "null"):
            return None
        kind = kind.removesuffix("| None").strip()
    if isinstance(value, str) and kind in ("int", "float"):
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            raise ValueError(f"config field {f.name!r} needs a number, got {value!r}") from None
    if isinstance(value, str) and kind == "bool":
        lowered = value.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"config field {f.name!r} needs true or false, got {value!r}")
        return lowered in ("true", "1", "yes")
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int):
        return float(value)
    return value


__all__ = ["ModelConfig", "TrainConfig", "MODEL_PRESETS", "TRAIN_PRESETS", "apply_overrides", "config_to_dict",
           "config_from_dict", "override", "parse_set"]
