"""Samplers for the reverse VE SDE on the torus (Song et al. 2021, section 4 and appendix G).

- :func:`pc_sample`: reverse-diffusion predictor (Euler-Maruyama) + Langevin corrector steps;
- :func:`ode_sample`: probability-flow ODE, Heun's second-order method.

Both integrate from ``t_start`` to t = 0 (sigma_min) on rows x (R, d), with ``batch`` (R,) the
crystal of each row and ``mask`` (R, d) the coordinates that move. ``score_fn(x, t)`` takes t per
crystal (B,). After every step the state is wrapped (and ``project``, when given, re-symmetrizes:
for free Wyckoff parameters the orbit is rebuilt from them, so wrapping is all it takes).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .sde import VESDE, ScoreFn
from .wrapped import wrap


def _times(t_start: float, n_steps: int, dtype, device) -> torch.Tensor:
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return torch.linspace(t_start, 0.0, n_steps + 1, dtype=dtype, device=device)


def _full(t: torch.Tensor, n_crystals: int) -> torch.Tensor:
    return t.expand(n_crystals).contiguous()  # (B,)


def pc_sample(sde: VESDE, score_fn: ScoreFn, x: torch.Tensor, batch: torch.Tensor, n_crystals: int,
              t_start: float = 1.0, n_steps: int = 100, n_corrector: int = 1, snr: float = 0.1,
              mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
              project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Predictor-corrector sampling; returns the final noise-free mean, wrapped.

    Langevin step size epsilon = 2 (snr sigma_t)^2: Song et al.'s rule 2 (snr |z| / |s|)^2 with
    |s| ~ |z| / sigma for a Gaussian score, without the per-batch norms (so one crystal's step
    does not depend on the others in the batch).
    """
    mask = torch.ones_like(x) if mask is None else mask
    project = project or (lambda y: y)
    rev = sde.reverse(score_fn)
    ts = _times(t_start, n_steps, x.dtype, x.device)
    x = project(wrap(x))
    for n in range(n_steps):
        t, dt = _full(ts[n], n_crystals), float(ts[n + 1] - ts[n])
        for _ in range(n_corrector):
            sig = sde.sigma(t)[batch].unsqueeze(-1)  # (R, 1)
            eps = 2 * (snr * sig) ** 2
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = project(wrap(x + (eps * score_fn(x, t) + torch.sqrt(2 * eps) * noise) * mask))
        drift, g = rev.sde(x, t, batch)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        mean = x + drift * dt * mask
        last = n == n_steps - 1
        x = project(wrap(mean if last else mean + g * math.sqrt(-dt) * noise * mask))
    return x


def ode_sample(sde: VESDE, score_fn: ScoreFn, x: torch.Tensor, batch: torch.Tensor, n_crystals: int,
               t_start: float = 1.0, n_steps: int = 50, mask: torch.Tensor | None = None,
               project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Probability-flow ODE dx/dt = -g^2 s / 2, Heun steps (2 score calls per step)."""
    mask = torch.ones_like(x) if mask is None else mask
    project = project or (lambda y: y)
    rev = sde.reverse(score_fn, probability_flow=True)
    ts = _times(t_start, n_steps, x.dtype, x.device)
    x = project(wrap(x))
    for n in range(n_steps):
        t0, t1 = _full(ts[n], n_crystals), _full(ts[n + 1], n_crystals)
        dt = float(ts[n + 1] - ts[n])
        d0, _ = rev.sde(x, t0, batch)
        x_euler = x + d0 * dt * mask  # unwrapped: the drift at the end point is evaluated on the torus anyway
        d1, _ = rev.sde(project(wrap(x_euler)), t1, batch)
        x = x + 0.5 * (d0 + d1) * dt * mask
        x = project(wrap(x))
    return x
