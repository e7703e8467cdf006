"""Training objectives: denoising score matching (DSM) and sliced score matching (SSM).

DSM (Vincent 2011): E |s(z) - grad_z log N_wrap(z; x0, sigma^2)|^2 / lambda(sigma), where
lambda(sigma) = E|target|^2 per coordinate is estimated once by Monte Carlo on a log-sigma grid
(:func:`target_mean_square`) and interpolated; it tends to 1/sigma^2 for small sigma (e.g.
sigma = 0.005: 4e4), to 2.3 at sigma = 0.3 and to 0.004 at sigma = 0.5, where the wrapped normal is nearly flat.

SSM (Song et al. 2019): E_v E_z [ (v.s)^2 / 2 + v . grad_z (v.s) ] with Rademacher v; up to a
constant it equals the Fisher divergence to the noisy data distribution, so no closed-form target
is needed. Here written as |v.s|^2 + 2 v.grad(v.s) (twice the above), scaled by 1/lambda(sigma).
"""

from __future__ import annotations

from typing import Callable

import torch

from . import wrapped


def target_mean_square(sigmas: torch.Tensor, n: int = 20000, seed: int = 0) -> torch.Tensor:
    """E_z |grad log N_wrap(z; 0, sigma^2)|^2 per coordinate for each sigma (float64 Monte Carlo)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in sigmas.to(torch.float64).tolist():
        z = wrapped.sample(torch.zeros(n, dtype=torch.float64), s, generator=g)
        out.append(wrapped.score(z, torch.zeros_like(z), s).pow(2).mean())
    return torch.stack(out)


def interpolate_log(table_sigma: torch.Tensor, table_value: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of log(value) in log(sigma), clamped at the ends."""
    ls, lv = table_sigma.log(), table_value.log()
    x = sigma.log().clamp(ls[0], ls[-1])
    idx = torch.searchsorted(ls, x.contiguous()).clamp(1, len(ls) - 1)
    x0, x1 = ls[idx - 1], ls[idx]
    w = (x - x0) / (x1 - x0)
    return torch.exp(lv[idx - 1] + w * (lv[idx] - lv[idx - 1]))


def dsm_loss(score: torch.Tensor, z: torch.Tensor, x0: torch.Tensor, sigma_rows: torch.Tensor,
             norm_rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked coordinates of |s - target|^2 / lambda; all row tensors (R, d), sigma/norm (R, 1)."""
    target = wrapped.score(z, x0, sigma_rows.expand_as(z)) * mask
    err = (score - target).pow(2) * mask / norm_rows
    return err.sum() / mask.sum().clamp(min=1)


def ssm_loss(score_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, norm_rows: torch.Tensor,
             mask: torch.Tensor, generator: torch.Generator | None = None, n_projections: int = 1) -> torch.Tensor:
    """Sliced score matching on rows z (R, d) (masked coordinates only); score_fn must be differentiable in z."""
    z = z.detach().requires_grad_(True)
    s = score_fn(z)
    total = 0.0
    for _ in range(n_projections):
        v = (torch.randint(0, 2, z.shape, generator=generator, device=z.device).to(z.dtype) * 2 - 1) * mask
        vs = (v * s).sum()
        grad = torch.autograd.grad(vs, z, create_graph=True)[0]  # (R, d): grad_z (v.s) summed over rows
        per_row = (v * s).sum(-1).pow(2) + 2 * (v * grad).sum(-1)  # (R,)
        total = total + (per_row / norm_rows.squeeze(-1)).sum()
    return total / n_projections / mask.sum().clamp(min=1)
