"""Wrapped-normal math, the VE SDE and the samplers against independent oracles."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from crystalformer.refinement import wrapped
from crystalformer.refinement.samplers import ode_sample, pc_sample
from crystalformer.refinement.sde import VESDE


def _brute_log_density(z, x0, sigma, n=12):
    """log sum_k N(z; x0 - k, sigma^2) over |k| <= 12: the oracle."""
    k = torch.arange(-n, n + 1, dtype=torch.float64)
    r = x0.unsqueeze(-1) - k - z.unsqueeze(-1)
    return torch.logsumexp(-0.5 * (r / sigma) ** 2, -1) - math.log(sigma) - 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.1, 0.3, 0.5])
def test_score_is_autograd_of_image_sum(sigma):
    g = torch.Generator().manual_seed(1)
    z = torch.cat([torch.rand(200, generator=g, dtype=torch.float64),
                   torch.tensor([0.0, 1e-9, 0.999999, 0.5, 0.25], dtype=torch.float64)])
    x0 = torch.cat([torch.rand(200, generator=g, dtype=torch.float64),
                    torch.tensor([0.999, 0.001, 0.0003, 0.0, 0.75], dtype=torch.float64)])
    zz = z.clone().requires_grad_(True)
    lp = _brute_log_density(zz, x0, sigma)
    (grad,) = torch.autograd.grad(lp.sum(), zz)
    torch.testing.assert_close(wrapped.score(z, x0, sigma), grad, rtol=1e-9, atol=1e-9 / sigma**2)
    torch.testing.assert_close(wrapped.log_prob(z, x0, sigma), lp.detach(), rtol=1e-9, atol=1e-9)


def test_density_normalized_and_sampler_matches():
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)[:-1]
    for sigma in (0.01, 0.2, 0.5):
        mass = wrapped.log_prob(x, torch.tensor(0.9, dtype=torch.float64), sigma).exp().mean()
        assert abs(float(mass) - 1) < 1e-6
    z = wrapped.sample(torch.full((20000,), 0.95, dtype=torch.float64), 0.1, torch.Generator().manual_seed(0))
    d = wrapped.centred_difference(z, torch.tensor(0.95, dtype=torch.float64))
    assert stats.kstest(d.numpy(), stats.norm(scale=0.1).cdf).pvalue > 1e-3


def test_sde_schedule_and_rows():
    sde = VESDE(0.005, 0.5)
    t = torch.tensor([0.0, 1.0, 0.5])
    torch.testing.assert_close(sde.sigma(t), torch.tensor([0.005, 0.5, 0.05]))
    assert abs(sde.t_of_sigma(0.05) - 0.5) < 1e-12
    x = torch.zeros(5, 3)
    batch = torch.tensor([0, 0, 1, 2, 2])
    _, std = sde.marginal_prob(x, t, batch)
    assert std.shape == (5, 1) and float(std[2]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(0.5, 0.1)


MU, S0 = 0.93, 0.08  # data: N_wrap(0.93, 0.08^2), near the cell boundary on purpose


def _exact(sde, mu):
    def score_fn(x, t):
        s = torch.sqrt(S0**2 + sde.sigma(t) ** 2)[0]
        return wrapped.score(x, mu.expand_as(x), s)
    return score_fn


@pytest.mark.parametrize("sampler", ["pc", "ode"])
@pytest.mark.parametrize("dim", [1, 3])
def test_samplers_reproduce_wrapped_normal(sampler, dim):
    sde = VESDE(0.005, 0.5)
    g = torch.Generator().manual_seed(3)
    n = 4000
    mu = torch.tensor([MU, 0.1, 0.5][:dim], dtype=torch.float64)
    t0 = sde.t_of_sigma(0.3)
    x = wrapped.sample(mu.expand(n, dim), math.sqrt(S0**2 + 0.3**2), g)
    batch = torch.zeros(n, dtype=torch.long)
    if sampler == "pc":
        out = pc_sample(sde, _exact(sde, mu), x, batch, 1, t_start=t0, n_steps=200, n_corrector=1, snr=0.1,
                        generator=g)
    else:
        out = ode_sample(sde, _exact(sde, mu), x, batch, 1, t_start=t0, n_steps=60)
    target_std = math.sqrt(S0**2 + 0.005**2)
    for axis in range(dim):
        d = wrapped.centred_difference(out[:, axis], mu[axis]).numpy()
        assert stats.kstest(d, stats.norm(scale=target_std).cdf).pvalue > 1e-3, (axis, d.std())
