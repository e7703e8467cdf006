"""Design targets: parsing, likelihoods against direct formulas, numerically safe tails."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from crystalformer.inverse.targets import Target, parse_target, parse_targets


def test_parsing_reads_every_form():
    assert parse_target("band_gap=3.0+-0.2") == Target("band_gap", "window", 3.0, 0.2)
    assert parse_target("band_gap = 3±0.2") == Target("band_gap", "window", 3.0, 0.2)
    assert parse_target("formation_energy_per_atom=min") == Target("formation_energy_per_atom", "min")
    assert parse_target("heat_ref=max@0.05") == Target("heat_ref", "max", tail=0.05)
    assert parse_target("heat_ref<-0.5") == Target("heat_ref", "below", -0.5)
    assert parse_target("band_gap>1e-1") == Target("band_gap", "above", 0.1)
    assert parse_target("band_gap=2.5") == Target("band_gap", "value", 2.5)
    both = parse_targets(["band_gap=3+-0.2,formation_energy_per_atom=min"])
    assert [t.name for t in both] == ["band_gap", "formation_energy_per_atom"]
    assert [t.name for t in parse_targets(["band_gap=3+-0.2", "heat_ref=max"])] == ["band_gap", "heat_ref"]


@pytest.mark.parametrize("bad", ["band_gap", "band_gap=abc", "band_gap=3+-0", "=3", "band_gap=min@0.7"])
def test_parsing_errors_name_the_input(bad):
    with pytest.raises(ValueError, match="band_gap|target|tail"):
        parse_target(bad)
    with pytest.raises(ValueError, match="more than once"):
        parse_targets("a=1+-1,a=min")


def test_likelihoods_equal_the_gaussian_formulas_and_stay_finite_in_the_tails():
    f = np.array([-40.0, 0.0, 2.9, 3.0, 3.3, 40.0])
    s = 0.25
    window = Target("g", "window", 3.0, 0.2).log_likelihood(f, s)
    with np.errstate(divide="ignore"):  # the direct formula underflows to log 0 in the far tails
        direct = np.log(norm.cdf((3.2 - f) / s) - norm.cdf((2.8 - f) / s))
    ok = np.isfinite(direct)
    assert np.allclose(window[ok], direct[ok], atol=1e-9)
    assert np.all(np.isfinite(window)) and window[0] < -1000 and window[-1] < -1000  # far tails: no -inf, no NaN
    assert np.allclose(Target("g", "below", 1.0).log_likelihood(f, s), norm.logcdf((1.0 - f) / s))
    assert np.allclose(Target("g", "above", 1.0).log_likelihood(f, s), norm.logcdf((f - 1.0) / s))
    assert np.allclose(Target("g", "value", 3.0).log_likelihood(f, s), norm.logpdf(3.0, f, s))
    assert list(Target("g", "window", 3.0, 0.2).satisfied(f)) == [False, False, True, True, False, False]
    with pytest.raises(ValueError, match="resolve"):
        Target("g", "min").log_likelihood(f, s)
    assert math.isclose(float(Target("g", "window", 3.0, 0.2).log_likelihood(np.array([3.0]), 1e-3)[0]), 0.0,
                        abs_tol=1e-12)


def test_annealing_schedule_is_geometric_then_constant():
    from crystalformer.inverse.mcmc import beta_schedule

    b = beta_schedule(10, beta=1.0, beta_start=0.01, anneal_steps=5)
    assert np.allclose(b[:5], [0.01, 0.01 ** 0.75, 0.1, 0.01 ** 0.25, 1.0]) and np.all(b[5:] == 1.0)
    assert np.all(beta_schedule(4) == 1.0)
    with pytest.raises(ValueError):
        beta_schedule(4, beta=0.0)
