"""Design targets: what property values are wanted, and their likelihood under a property model.

Written on the command line as ``NAME=SPEC``, several separated by commas (or given repeatedly):

- ``band_gap=3.0+-0.2`` (or ``3.0±0.2``): the value lies in [2.8, 3.2]. Likelihood: the
  probability of that event under the property model's Gaussian,
  L(X) = Phi((hi - f(X)) / sigma) - Phi((lo - f(X)) / sigma);
- ``band_gap=3.0``: a measured value, L(X) = N(3.0; f(X), sigma^2) (met within one sigma);
- ``heat_ref<0.5`` / ``heat_ref>2``: a threshold, L(X) = Phi((0.5 - f(X)) / sigma) (or mirrored);
- ``formation_energy_per_atom=min`` / ``=max``: "as low (high) as possible", read as the
  threshold event below the q-quantile (above the 1-q quantile) of the property model's
  training targets, q = 0.01 by default; ``=min@0.05`` sets q. With annealing (beta > 1 at the
  end) the chains concentrate further on crystals predicted deep in that tail.

Properties of one crystal are taken as independent given X, so the log-likelihoods add.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

DEFAULT_TAIL = 0.01
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "window", "value", "below", "above", "min", "max"
    value: float | None = None  # centre, threshold; None for min / max until resolved
    tolerance: float = 0.0
    tail: float = DEFAULT_TAIL  # quantile of min / max targets

    def __post_init__(self):
        if self.kind not in ("window", "value", "below", "above", "min", "max"):
            raise ValueError(f"unknown target kind {self.kind!r}")
        if self.kind == "window" and not self.tolerance > 0:
            raise ValueError(f"target {self.name}: tolerance must be > 0, got {self.tolerance}")
        if not 0 < self.tail < 0.5:
            raise ValueError(f"target {self.name}: the tail quantile must be in (0, 0.5), got {self.tail}")

    def __str__(self) -> str:
        if self.kind == "window":
            return f"{self.name}={self.value:g}±{self.tolerance:g}"
        if self.kind == "value":
            return f"{self.name}={self.value:g}"
        if self.kind in ("below", "above"):
            return f"{self.name}{'<' if self.kind == 'below' else '>'}{self.value:g}"
        return f"{self.name}={self.kind}@{self.tail:g}"

    def resolve(self, model) -> Target:
        """min / max become below / above the training quantile of ``model`` (a PropertyModel)."""
        if self.kind == "min":
            return Target(self.name, "below", model.quantile(self.tail), tail=self.tail)
        if self.kind == "max":
            return Target(self.name, "above", model.quantile(1 - self.tail), tail=self.tail)
        return self

    def log_likelihood(self, pred: np.ndarray, sigma: float) -> np.ndarray:
        """log L of predictions ``pred`` under N(pred, sigma^2) (see module docstring)."""
        from scipy.special import log_ndtr

        if self.kind in ("min", "max"):
            raise ValueError(f"target {self}: resolve it against its property model first")
        f = np.asarray(pred, dtype=float)
        if self.kind == "value":
            return -0.5 * ((self.value - f) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
        if self.kind == "below":
            return log_ndtr((self.value - f) / sigma)
        if self.kind == "above":
            return log_ndtr((f - self.value) / sigma)
        lo, hi = (self.value - self.tolerance - f) / sigma, (self.value + self.tolerance - f) / sigma
        # log(Phi(hi) - Phi(lo)) computed in the tail where both are small: mirror when lo > 0
        flip = lo > 0
        a, b = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
        lb, la = log_ndtr(b), log_ndtr(a)
        return lb + np.log1p(-np.exp(np.minimum(la - lb, 0.0)))

    def satisfied(self, pred: np.ndarray, sigma: float = 0.0) -> np.ndarray:
        """Whether predictions meet the target (``value`` targets: within one sigma)."""
        f = np.asarray(pred, dtype=float)
        if self.kind == "window":
            return np.abs(f - self.value) <= self.tolerance
        if self.kind == "value":
            return np.abs(f - self.value) <= sigma
        if self.kind == "below":
            return f <= self.value
        if self.kind == "above":
            return f >= self.value
        raise ValueError(f"target {self}: resolve it against its property model first")


def parse_target(text: str) -> Target:
    """One target from its text (module docstring); ValueError naming what is wrong."""
    s = text.strip().replace(" ", "")
    m = re.fullmatch(r"([A-Za-z_][\w.]*)(<|>)(" + _NUMBER + r")", s)
    if m:
        return Target(m[1], "below" if m[2] == "<" else "above", float(m[3]))
    m = re.fullmatch(r"([A-Za-z_][\w.]*)=(.+)", s)
    if not m:
        raise ValueError(f"cannot read target {text!r}: expected NAME=VALUE+-TOL, NAME=VALUE, NAME=min, NAME=max, "
                         f"NAME<VALUE or NAME>VALUE")
    name, spec = m[1], m[2]
    d = re.fullmatch(r"(min|max)(?:@(" + _NUMBER + r"))?", spec.lower())
    if d:
        return Target(name, d[1], None, tail=float(d[2]) if d[2] else DEFAULT_TAIL)
    w = re.fullmatch(r"(" + _NUMBER + r")(?:(?:\+-|±|\+/-)(" + _NUMBER + r"))?", spec)
    if not w:
        raise ValueError(f"cannot read target {text!r}: {spec!r} is not a number, NUMBER+-TOL, min or max")
    if w[2] is None:
        return Target(name, "value", float(w[1]))
    tol = float(w[2])
    if not tol > 0:
        raise ValueError(f"target {text!r}: the tolerance must be > 0")
    return Target(name, "window", float(w[1]), tol)


def parse_targets(specs) -> list[Target]:
    """Targets from strings, each holding one or several comma-separated targets; names must be unique."""
    if isinstance(specs, str):
        specs = [specs]
    out = [parse_target(part) for spec in specs for part in spec.split(",") if part.strip()]
    if not out:
        raise ValueError("no target given")
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"target(s) {dup} given more than once")
    return out
