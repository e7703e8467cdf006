"""Variance-exploding SDE on the torus (Song et al. 2021, eq. 30).

dx = sqrt(d sigma^2 / dt) dW with sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [0, 1].
There is no drift (alpha_t = 1): a VP scaling alpha_t x would not commute with lattice
translations. States are rows (R, d) of fractional coordinates (or free Wyckoff parameters);
times are per crystal (B,) and are broadcast to rows by ``batch`` (R,) indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .wrapped import wrap

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (R, d), t (B,)) -> score (R, d)


def _rows(t: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
    """Per-crystal values (B,) -> per-row column (R, 1)."""
    return (t if batch is None else t[batch]).unsqueeze(-1)  # (R, 1)


@dataclass(frozen=True)
class VESDE:
    """Geometric sigma schedule from ``sigma_min`` (t = 0) to ``sigma_max`` (t = 1)."""

    sigma_min: float = 0.005
    sigma_max: float = 0.5

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min=}, {self.sigma_max=}")

    @property
    def log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_sigma(self, sigma: float) -> float:
        """Inverse of the schedule: the time at which sigma(t) = sigma."""
        if not self.sigma_min <= sigma <= self.sigma_max:
            raise ValueError(f"sigma {sigma} outside the schedule [{self.sigma_min}, {self.sigma_max}]")
        return math.log(sigma / self.sigma_min) / self.log_ratio

    def sde(self, x: torch.Tensor, t: torch.Tensor, batch: torch.Tensor | None = None):
        """Drift (R, d) and diffusion g(t) (R, 1): g^2 = d sigma^2/dt = 2 sigma^2 log(smax/smin)."""
        g = self.sigma(t) * math.sqrt(2 * self.log_ratio)  # (B,)
        return torch.zeros_like(x), _rows(g, batch)

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor, batch: torch.Tensor | None = None):
        """Mean and std of p(x_t | x_0): N_wrap(x_0, sigma(t)^2)."""
        return x0, _rows(self.sigma(t), batch)

    def prior_sampling(self, shape, generator: torch.Generator | None = None, dtype=torch.float32,
                       device=None) -> torch.Tensor:
        """N_wrap(., sigma_max^2) is within ~1e-4 of uniform for sigma_max = 0.5: sample uniform."""
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        return ReverseSDE(self, score_fn, probability_flow)


@dataclass(frozen=True)
class ReverseSDE:
    """dx = [f - g^2 s] dt + g dW-bar (or the probability-flow ODE: f - g^2 s / 2, no noise)."""

    forward: VESDE
    score_fn: ScoreFn
    probability_flow: bool = False

    def sde(self, x: torch.Tensor, t: torch.Tensor, batch: torch.Tensor | None = None):
        drift, g = self.forward.sde(x, t, batch)
        coef = 0.5 if self.probability_flow else 1.0
        drift = drift - coef * g**2 * self.score_fn(x, t)
        return drift, (torch.zeros_like(g) if self.probability_flow else g)

    def discretize(self, x: torch.Tensor, t: torch.Tensor, dt: float, batch: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One Euler-Maruyama step of size dt < 0; returns (x wrapped, mean wrapped)."""
        drift, g = self.sde(x, t, batch)
        mean = x + drift * dt
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return wrap(mean + g * math.sqrt(-dt) * noise), wrap(mean)
