"""The three output distributions, each pairing ``log_prob`` with ``sample``.

- :class:`MaskedCategorical`: logits restricted to a boolean mask of legal tokens (from the
  grammar). Illegal tokens get probability exactly 0 through ``masked_fill(-inf)`` before the
  softmax, never by adding -1e10 (which overflows in bf16 and leaks mass in float32).
- :class:`VonMisesMixture`: a mixture of von Mises densities on the circle, used for a
  fractional coordinate x in [0, 1) through the angle 2 pi x. Its density in x is
  2 pi times the density in the angle (``log_prob`` returns the density in x).
- :class:`GaussianMixture`: a mixture of normals on a transformed axis y = g(v); ``log_prob``
  of the physical value v adds log|dg/dv| (for lengths g = log v, so the mixture is a
  log-normal mixture in Å; for angles g = (v - 90) / 30 in degrees).

Sampling takes an explicit ``torch.Generator``; no global random state is touched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TWO_PI = 2.0 * math.pi
ANGLE_SCALE = 30.0  # degrees per unit of the transformed angle axis
LOG_ANGLE_SCALE = math.log(ANGLE_SCALE)


# ---------------------------------------------------------------------- categorical
class MaskedCategorical:
    """Categorical over ``logits`` (..., V) restricted to ``mask`` (..., V) bool."""

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not bool(mask.any(-1).all()):
            raise ValueError("a mask allows no token at all: the grammar state has no legal continuation")
        self.mask = mask
        self.logits = (logits.float() / temperature).masked_fill(~mask, float("-inf"))

    def log_probs(self) -> torch.Tensor:
        """(..., V) log-probabilities; exactly -inf on illegal tokens."""
        return torch.log_softmax(self.logits, dim=-1)

    def log_prob(self, token: torch.Tensor) -> torch.Tensor:
        return self.log_probs().gather(-1, token.long().unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None, top_p: float = 1.0) -> torch.Tensor:
        """Token ids (...,) drawn from the (nucleus-truncated when top_p < 1) distribution."""
        probs = self.log_probs().exp()
        if top_p < 1.0:
            probs = nucleus(probs, top_p)
        flat = probs.reshape(-1, probs.shape[-1])  # (N, V)
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (always the top one)."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the more likely tokens
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


# ---------------------------------------------------------------------- von Mises mixture
def _log_i0(kappa: torch.Tensor) -> torch.Tensor:
    """log I0(kappa), stable for large kappa: I0(k) = i0e(k) * exp(k)."""
    return torch.log(torch.special.i0e(kappa)) + kappa


class VonMisesMixture:
    """Mixture of von Mises on the angle 2 pi x; values are fractional coordinates x in [0, 1).

    Parameters (..., K): ``logits`` mixture weights, ``loc`` mean angles (any real: the density is
    periodic in them), ``concentration`` kappa > 0.
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, concentration: torch.Tensor):
        self.log_weights = torch.log_softmax(logits.float(), dim=-1)
        self.loc = loc.float()
        self.kappa = concentration.float()

    @classmethod
    def from_raw(cls, raw: torch.Tensor, min_kappa: float = 1e-3, max_kappa: float = 1e4) -> VonMisesMixture:
        """Split (..., 3K) raw outputs into (logits, loc, concentration)."""
        logits, loc, k = raw.float().chunk(3, dim=-1)  # each (..., K)
        kappa = (F.softplus(k) + min_kappa).clamp(max=max_kappa)
        return cls(logits, loc, kappa)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density in x (per unit fractional coordinate), shape (...)."""
        theta = TWO_PI * x.float().unsqueeze(-1)  # (..., 1)
        comp = self.kappa * torch.cos(theta - self.loc) - _log_i0(self.kappa) - math.log(TWO_PI)  # (..., K)
        return torch.logsumexp(self.log_weights + comp, dim=-1) + math.log(TWO_PI)

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None, rounds: int | None = None):
        """x in [0, 1), shape (...).

        With ``rounds``: ``(x, ok, component)``, drawn without host synchronization by
        :func:`sample_von_mises_at_once`; where ``ok`` is False, x is not a draw: draw its angle
        again *for the same mixture component* (``component`` = (loc, kappa), flat), with
        :func:`angle_in_component` (drawing the component again would favour easy components).
        """
        shape = self.loc.shape[:-1]
        w = self.log_weights.exp().reshape(-1, self.loc.shape[-1])  # (N, K)
        k = torch.multinomial(w, 1, generator=generator).squeeze(-1)  # (N,)
        loc = self.loc.reshape(-1, w.shape[-1]).gather(-1, k[:, None]).squeeze(-1)  # (N,)
        kappa = self.kappa.reshape(-1, w.shape[-1]).gather(-1, k[:, None]).squeeze(-1)  # (N,)
        if rounds is None:
            theta = loc.double() + sample_von_mises(kappa.double(), generator)
            return torch.remainder(theta / TWO_PI, 1.0).float().reshape(shape)
        angle, ok = sample_von_mises_at_once(kappa.double(), generator, rounds)
        x = torch.remainder((loc.double() + angle) / TWO_PI, 1.0).float().reshape(shape)
        return x, ok.reshape(shape), (loc, kappa)


def angle_in_component(loc: torch.Tensor, kappa: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """x in [0, 1) from the von Mises component (loc, kappa) itself (the sequential rejection sampler)."""
    theta = loc.double() + sample_von_mises(kappa.double(), generator)
    return torch.remainder(theta / TWO_PI, 1.0).float()


def sample_von_mises_at_once(kappa: torch.Tensor, generator: torch.Generator | None = None,
                             rounds: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(angles, ok): ``rounds`` Best & Fisher proposals per entry drawn together, the first accepted one kept.

    Exact where any proposal is accepted: rejection sampling returns the first accepted proposal
    of an i.i.d. sequence, and these are its first ``rounds``. Shapes do not depend on the data, so
    a GPU never waits for the host. ``ok`` is False where every proposal was rejected (each is
    accepted with probability > 65 %: at 16 rounds fewer than 1 entry in 10^7); draw those again
    with :func:`sample_von_mises`.
    """
    kappa = kappa.double()
    n = kappa.shape[0]
    k = kappa.clamp_min(1e-6)[None]  # (1, n)
    tau = 1 + torch.sqrt(1 + 4 * k * k)
    rho = (tau - torch.sqrt(2 * tau)) / (2 * k)
    r = (1 + rho * rho) / (2 * rho)
    u = torch.rand((3, rounds, n), generator=generator, dtype=torch.float64, device=kappa.device)
    z = torch.cos(math.pi * u[0])
    f = (1 + r * z) / (r + z)
    c = k * (r - f)
    accept = (c * (2 - c) - u[1] > 0) | (torch.log(c / u[1]) + 1 - c >= 0)  # (rounds, n)
    theta = torch.sign(u[2] - 0.5) * torch.acos(f.clamp(-1, 1))  # (rounds, n)
    first = accept.int().argmax(0)  # (n,) the first accepted round (0 when none)
    out = theta.gather(0, first[None]).squeeze(0)
    small = kappa < 1e-6  # practically uniform, as in sample_von_mises
    uniform = (2 * torch.rand(n, generator=generator, dtype=torch.float64, device=kappa.device) - 1) * math.pi
    return torch.where(small, uniform, out), accept.any(0) | small


def sample_von_mises(kappa: torch.Tensor, generator: torch.Generator | None = None,
                     max_rounds: int = 1000) -> torch.Tensor:
    """Angles in (-pi, pi] from von Mises(0, kappa) by Best & Fisher's (1979) rejection sampler.

    Vectorized: every round proposes for the still-rejected entries; the acceptance rate is
    above 65% for every kappa, so a few rounds suffice. float64 keeps rho accurate for small kappa.
    """
    kappa = kappa.double()
    out = torch.empty_like(kappa)
    small = kappa < 1e-6  # practically uniform; the formula below divides by kappa
    if small.any():
        u = torch.rand(int(small.sum()), generator=generator, dtype=torch.float64, device=kappa.device)
        out[small] = (2 * u - 1) * math.pi
    todo = torch.nonzero(~small).squeeze(-1)
    k_all = kappa
    for _ in range(max_rounds):
        if todo.numel() == 0:
            return out
        k = k_all[todo]
        tau = 1 + torch.sqrt(1 + 4 * k * k)
        rho = (tau - torch.sqrt(2 * tau)) / (2 * k)
        r = (1 + rho * rho) / (2 * rho)
        u = torch.rand((3, todo.numel()), generator=generator, dtype=torch.float64, device=kappa.device)
        z = torch.cos(math.pi * u[0])
        f = (1 + r * z) / (r + z)
        c = k * (r - f)
        accept = (c * (2 - c) - u[1] > 0) | (torch.log(c / u[1]) + 1 - c >= 0)
        theta = torch.sign(u[2] - 0.5) * torch.acos(f.clamp(-1, 1))
        out[todo[accept]] = theta[accept]
        todo = todo[~accept]
    raise RuntimeError(f"von Mises sampler did not converge in {max_rounds} rounds")


# ---------------------------------------------------------------------- Gaussian mixture
class GaussianMixture:
    """Mixture of normals on y = g(v), v a lattice length (Å, g = log) or angle (degrees, g = (v - 90) / 30).

    ``is_length`` (...) bool says which transform each entry uses.
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, is_length: torch.Tensor):
        self.log_weights = torch.log_softmax(logits.float(), dim=-1)
        self.loc = loc.float()
        self.scale = scale.float()
        self.is_length = is_length

    @classmethod
    def from_raw(cls, raw: torch.Tensor, is_length: torch.Tensor, min_scale: float = 1e-3) -> GaussianMixture:
        logits, loc, s = raw.float().chunk(3, dim=-1)  # each (..., K)
        return cls(logits, loc, F.softplus(s) + min_scale, is_length)

    def log_prob(self, v: torch.Tensor) -> torch.Tensor:
        """Log density of the physical value v (per Å or per degree), shape (...)."""
        v = v.float()
        y, log_jac = to_axis(v, self.is_length)
        z = (y.unsqueeze(-1) - self.loc) / self.scale  # (..., K)
        comp = -0.5 * z * z - torch.log(self.scale) - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(self.log_weights + comp, dim=-1) + log_jac

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = self.loc.shape[:-1]
        K = self.loc.shape[-1]
        w = self.log_weights.exp().reshape(-1, K)  # (N, K)
        k = torch.multinomial(w, 1, generator=generator)  # (N, 1)
        loc = self.loc.reshape(-1, K).gather(-1, k).squeeze(-1)  # (N,)
        scale = self.scale.reshape(-1, K).gather(-1, k).squeeze(-1)  # (N,)
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return from_axis((loc + scale * eps).reshape(shape), self.is_length)


def to_axis(v: torch.Tensor, is_length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, log|dy/dv|) of lattice values: lengths y = log v; angles y = (v - 90) / 30."""
    safe = torch.where(is_length, v.clamp_min(1e-6), v)
    y = torch.where(is_length, torch.log(safe), (v - 90.0) / ANGLE_SCALE)
    log_jac = torch.where(is_length, -torch.log(safe), torch.full_like(v, -LOG_ANGLE_SCALE))
    return y, log_jac


def from_axis(y: torch.Tensor, is_length: torch.Tensor) -> torch.Tensor:
    return torch.where(is_length, torch.exp(y), 90.0 + ANGLE_SCALE * y)
