"""Property models p(y | X): a small regressor on the crystal's token stream, with a calibrated Gaussian.

The network reuses the generative model's input features (:class:`InputEmbedding`: token,
slot, position, space group, multiplicity, Fourier features of coordinates, lattice MLP), so it
reads exactly the sentences the prior writes. Two read-outs (``PropertyConfig.arch``):

- ``"transformer"``: a causal transformer; the read-out concatenates the hidden state at [EOS]
  (which has seen the whole crystal) with the mean over positions;
- ``"deepset"``: no attention; each position is paired with the one before it (so an element
  sees its Wyckoff letter and multiplicity), passed through an MLP, and averaged. Used as an
  architecture-independent judge of designs (DESIGN section 8).

Targets are standardised with the training mean and standard deviation. The likelihood is
p(y | X) = N(y; f(X), sigma^2), sigma calibrated on validation residuals so that the interval
f(X) ± sigma covers ``coverage`` (default 68.27%, the Gaussian 1-sigma fraction) of them.

A property model directory holds ``config.json`` (:class:`PropertyConfig`), ``model.safetensors``,
``tokenizer.json`` and ``metadata.json`` (target name, normalisation, sigma, validation MAE,
mean-predictor MAE, coverage, training quantiles); nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..artifacts import PROPERTY, read_artifact, write_artifact
from ..config import ModelConfig, config_from_dict, config_to_dict
from ..tokenizer import CrystalTokenizer

ARCHS = ("transformer", "deepset")


@dataclass(frozen=True)
class PropertyConfig:
    """Network shape and training settings of a property model (stored in ``config.json``)."""

    arch: str = "transformer"
    """"transformer" (attention over the stream) or "deepset" (pairs of neighbouring tokens, averaged)."""
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    dropout: float = 0.1
    max_len: int = 320
    """Longest stream (learned positions); MP-20 streams are under ~120 tokens."""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    loss: str = "huber"
    """"huber" (robust to the heavy tails of formation energies), "mse" or "l1", on standardised targets."""
    seed: int = 0
    val_fraction: float = 0.1
    """Held-out fraction of the training crystals when no validation data are given."""
    coverage: float = 0.6827
    """Fraction of validation residuals that the calibrated interval f(X) ± sigma must cover."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.loss not in ("huber", "mse", "l1"):
            raise ValueError(f"loss must be 'huber', 'mse' or 'l1', got {self.loss!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        for name in ("d_model", "n_layer", "n_head", "max_len", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or self.lr <= 0 or not 0 < self.val_fraction < 1 or not 0 < self.coverage < 1:
            raise ValueError(f"need 0 <= dropout < 1, lr > 0, 0 < val_fraction < 1, 0 < coverage < 1; got "
                             f"{self.dropout}, {self.lr}, {self.val_fraction}, {self.coverage}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> PropertyConfig:
        if name not in PROPERTY_PRESETS:
            raise ValueError(f"unknown property preset {name!r}; choose one of {sorted(PROPERTY_PRESETS)}")
        return dataclasses.replace(PROPERTY_PRESETS[name], **overrides)

    def embedding_config(self, vocab_size: int) -> ModelConfig:
        """The :class:`ModelConfig` whose input features (and transformer shape) this network shares."""
        return ModelConfig(vocab_size=vocab_size, max_len=self.max_len, n_layer=self.n_layer, n_head=self.n_head,
                           d_model=self.d_model, dropout=self.dropout)


PROPERTY_PRESETS = {
    "tiny": PropertyConfig(d_model=16, n_layer=1, n_head=2, epochs=3, batch_size=16, dropout=0.0),
    "small": PropertyConfig(),
    "judge": PropertyConfig(arch="deepset", d_model=96, n_layer=2, seed=1, lr=2e-3),
}


class PropertyNet(nn.Module):
    """Token stream -> one standardised property value per crystal (pure torch)."""

    def __init__(self, config: PropertyConfig, tokenizer: CrystalTokenizer):
        super().__init__()
        from ..model.embedding import InputEmbedding, TokenTables
        from ..model.transformer import Transformer

        self.config, self.tokenizer = config, tokenizer
        mc = config.embedding_config(tokenizer.vocab_size)
        self.embed = InputEmbedding(mc, TokenTables(tokenizer))
        d = config.d_model
        if config.arch == "transformer":
            self.body = Transformer(mc)
            width = 2 * d
        else:
            self.body = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, 2 * d), nn.GELU())
            width = 2 * d
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d), nn.GELU(), nn.Dropout(config.dropout),
                                  nn.Linear(d, 1))

    def forward(self, ids: torch.Tensor, values: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        """(B,) standardised predictions from padded streams (B, T) and their validity mask (B, T)."""
        x, _ = self.embed(ids, values, slots)  # (B, T, C)
        m = mask.unsqueeze(-1).float()  # (B, T, 1)
        if self.config.arch == "transformer":
            h = self.body(x)  # (B, T, C)
            mean = (h * m).sum(1) / m.sum(1)  # (B, C)
            last = h[torch.arange(h.shape[0]), mask.sum(1) - 1]  # (B, C): the [EOS] position
            feat = torch.cat([last, mean], -1)  # (B, 2C)
        else:
            prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)  # (B, T, C): the token before
            h = self.body(torch.cat([x, prev], -1))  # (B, T, 2C)
            feat = (h * m).sum(1) / m.sum(1)  # (B, 2C)
        return self.head(feat).squeeze(-1)  # (B,)


class PropertyModel:
    """A trained :class:`PropertyNet` with its target name, normalisation and calibrated noise sigma."""

    def __init__(self, net: PropertyNet, metadata: dict):
        for key in ("target", "mean", "std", "sigma"):
            if key not in metadata:
                raise ValueError(f"property model metadata lacks {key!r}")
        self.net, self.metadata = net.eval(), dict(metadata)

    @property
    def target(self) -> str:
        return self.metadata["target"]

    @property
    def sigma(self) -> float:
        """Calibrated standard deviation of y around the prediction (target units)."""
        return float(self.metadata["sigma"])

    @property
    def tokenizer(self) -> CrystalTokenizer:
        return self.net.tokenizer

    def quantile(self, q: float) -> float:
        """The q-quantile of the training targets (stored at 0.01 steps; linear in between)."""
        grid = np.asarray(self.metadata["train_quantiles"], dtype=float)
        return float(np.interp(q, np.linspace(0, 1, len(grid)), grid))

    @torch.no_grad()
    def predict_streams(self, streams: list[tuple], batch_size: int = 512) -> np.ndarray:
        """Predictions (target units) of token streams given as (ids, values) pairs."""
        out = []
        for i in range(0, len(streams), batch_size):
            batch = collate_streams(self.tokenizer, streams[i:i + batch_size])
            out.append(self.net(batch["ids"], batch["values"], batch["slots"], batch["mask"]).double().numpy())
        pred = np.concatenate(out) * float(self.metadata["std"]) + float(self.metadata["mean"]) if out else np.zeros(0)
        bad = np.flatnonzero(~np.isfinite(pred))
        if bad.size:
            words = " ".join(self.tokenizer.to_words(streams[bad[0]][0]))
            raise ValueError(f"property model for {self.target!r} predicts {pred[bad[0]]} for {bad.size} crystal(s), "
                             f"e.g. {words!r}; the model file may be damaged")
        return pred

    def predict(self, crystals, batch_size: int = 512) -> np.ndarray:
        """Predictions (target units) for :class:`Crystal` objects."""
        streams = []
        for c in crystals:
            enc = self.tokenizer.encode(c)
            streams.append((enc.ids, enc.values))
        return self.predict_streams(streams, batch_size)

    def save(self, path) -> Path:
        return write_artifact(path, PROPERTY, config_to_dict(self.net.config), self.net, self.tokenizer, self.metadata)


def load_property_model(path) -> PropertyModel:
    """The property model stored in directory ``path`` (safetensors + JSON only)."""
    artifact = read_artifact(Path(path), PROPERTY)
    try:
        config = config_from_dict(PropertyConfig, artifact.config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{artifact.path / 'config.json'}: {err}") from None
    net = artifact.load_into(PropertyNet(config, artifact.tokenizer))
    return PropertyModel(net, artifact.metadata)


def gaussian_sigma(residuals: np.ndarray, coverage: float) -> float:
    """The sigma whose interval ±sigma covers ``coverage`` of |residuals|, rescaled so that a Gaussian
    N(0, sigma^2) has that coverage at ±sigma: sigma = quantile_coverage(|r|) / z, z = sqrt(2) erfinv(coverage).

    With the default coverage 0.6827, z = 1 and sigma is the 68.27% quantile of |r|.
    """
    from scipy.special import erfinv

    r = np.abs(np.asarray(residuals, dtype=float))
    if r.size == 0:
        raise ValueError("cannot calibrate sigma on an empty validation set")
    z = math.sqrt(2.0) * float(erfinv(coverage))
    return max(float(np.quantile(r, coverage)) / z, 1e-6)


def stream_examples(tokenizer: CrystalTokenizer, streams) -> list[dict]:
    """Examples for :func:`crystalformer.datamodule.collate` from prompt-free (ids, values) streams."""
    slot_of = np.array([int(tokenizer.token_slot(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)
    examples = []
    for ids, values in streams:
        ids = np.asarray(ids, dtype=np.int64)
        examples.append({"ids": ids, "values": np.asarray(values, dtype=np.float64), "slots": slot_of[ids],
                         "num_atoms": 0})
    return examples


def collate_streams(tokenizer: CrystalTokenizer, streams) -> dict[str, torch.Tensor]:
    from ..model.batching import collate

    return collate(stream_examples(tokenizer, streams), tokenizer.pad_id)
