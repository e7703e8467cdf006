"""Typed configs of the refiner: network, SDE, training. Stored as ``config.json`` in every model dir."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class NetworkConfig:
    hidden: int = 64  # width of atom / edge features
    n_layers: int = 3  # message-passing layers
    n_freq: int = 8  # Fourier frequencies k = 1..n_freq of fractional differences (per axis, sin and cos)
    n_sigma_freq: int = 8  # Fourier features of log sigma
    n_rbf: int = 16  # Gaussian radial features of minimum-image bond lengths, centres 0..rbf_max Å
    rbf_max: float = 8.0  # Å; beyond it the radial features fade (Fourier features still see the pair)
    max_z: int = 100  # atomic numbers 1..max_z embedded
    # "pairs": every atom against every atom of the conventional cell, Fourier + radial features
    # (:mod:`.network`); "sites": one receiver per Wyckoff site, periodic neighbours within
    # ``cutoff``, invariant features (:mod:`.radius`: exact under the space group, far fewer bonds)
    kind: str = "pairs"
    cutoff: float = 5.0  # Å, "sites" only: bonds longer than this are not seen (the radial features span 0..cutoff)
    edge_hidden: int = 24  # "sites" only: hidden width of the message MLPs (their cost is per bond)

    def __post_init__(self):
        if min(self.hidden, self.n_layers, self.n_freq, self.n_sigma_freq, self.n_rbf) < 1 or self.rbf_max <= 0:
            raise ValueError(f"all network sizes must be >= 1: {self}")
        if self.kind not in ("pairs", "sites"):
            raise ValueError(f"network kind must be 'pairs' or 'sites', got {self.kind!r}")
        if not self.cutoff > 0 or self.edge_hidden < 1:
            raise ValueError(f"cutoff must be > 0 Å and edge_hidden >= 1, got {self.cutoff}, {self.edge_hidden}")


@dataclass
class SDEConfig:
    sigma_min: float = 0.005
    sigma_max: float = 0.5

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max <= 0.5:
            raise ValueError(f"need 0 < sigma_min < sigma_max <= 0.5 (truncated image sum), got {self}")


@dataclass
class RefinerTrainConfig:
    objective: str = "dsm"  # "dsm" (denoising, default) or "ssm" (sliced score matching)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    max_epochs: int = 50
    batch_size: int = 32
    grad_clip: float = 1.0
    max_atoms: int = 80  # crystals with more atoms in the conventional cell are skipped (pairs grow as N^2)
    seed: int = 0
    val_fraction: float = 0.05
    num_workers: int = 0
    max_time_minutes: float | None = None  # wall-clock stop (Lightning max_time)

    def __post_init__(self):
        if self.objective not in ("dsm", "ssm"):
            raise ValueError(f"objective must be 'dsm' or 'ssm', got {self.objective!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1:
            raise ValueError(f"lr > 0, batch_size >= 1, max_epochs >= 1 needed: {self}")


@dataclass
class RefinerConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    train: RefinerTrainConfig = field(default_factory=RefinerTrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RefinerConfig:
        parts = {}
        for f, typ in (("network", NetworkConfig), ("sde", SDEConfig), ("train", RefinerTrainConfig)):
            sub = dict(d.get(f, {}))
            known = {x.name for x in fields(typ)}
            unknown = set(sub) - known
            if unknown:
                raise ValueError(f"unknown {f} config fields {sorted(unknown)}; known: {sorted(known)}")
            parts[f] = typ(**sub)
        return cls(**parts)

    @classmethod
    def from_name(cls, name: str) -> RefinerConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown refiner preset {name!r}; choose from {sorted(PRESETS)}")
        return cls.from_dict(PRESETS[name])

    def override(self, **values) -> RefinerConfig:
        """A copy with flat overrides (``lr=3e-4``, ``hidden=32``) applied to whichever section owns the field."""
        from dataclasses import fields, replace

        from ..config import override

        sections = {"network": self.network, "sde": self.sde, "train": self.train}
        per: dict[str, dict] = {name: {} for name in sections}
        for key, value in values.items():
            owners = [name for name, part in sections.items() if key in {f.name for f in fields(part)}]
            if not owners:
                raise ValueError(f"unknown config field {key!r}")
            per[owners[0]][key] = value
        return replace(self, **{name: override(part, per[name]) for name, part in sections.items()})


PRESETS: dict[str, dict] = {
    "tiny": {"network": {"hidden": 16, "n_layers": 1, "n_freq": 4, "n_sigma_freq": 4},
             "train": {"max_epochs": 2, "batch_size": 8, "warmup_steps": 2}},
    "small": {"network": {"hidden": 64, "n_layers": 3, "n_freq": 8},
              "train": {"max_epochs": 30, "batch_size": 32, "warmup_steps": 200}},
    "sites": {"network": {"hidden": 64, "n_layers": 3, "kind": "sites", "cutoff": 5.0, "edge_hidden": 24, "n_rbf": 12},
              "train": {"max_epochs": 50, "batch_size": 32, "warmup_steps": 200}},  # the shipped refiner's
}
