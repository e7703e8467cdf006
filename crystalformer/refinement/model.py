"""The refiner: score network + VE SDE + the DSM normalization table, acting on free parameters."""

from __future__ import annotations

import torch
from torch import nn

from .config import RefinerConfig
from .losses import dsm_loss, interpolate_log, ssm_loss, target_mean_square
from .network import ScoreNetwork, pair_index
from .sde import VESDE
from .symmetry import RefineBatch
from .wrapped import wrap

N_NORM = 64  # grid points of the normalization table


class Refiner(nn.Module):
    def __init__(self, config: RefinerConfig):
        super().__init__()
        self.config = config
        if config.network.kind == "sites":
            from .radius import SiteScoreNetwork

            self.network = SiteScoreNetwork(config.network)
        else:
            self.network = ScoreNetwork(config.network)
        self.sde = VESDE(config.sde.sigma_min, config.sde.sigma_max)
        sig = torch.logspace(torch.log10(torch.tensor(config.sde.sigma_min)).item(),
                             torch.log10(torch.tensor(config.sde.sigma_max)).item(), N_NORM, dtype=torch.float64)
        # stored (and saved): estimated once, so training and evaluation use the same numbers
        self.register_buffer("norm_sigma", sig.float())
        self.register_buffer("norm_value", target_mean_square(sig).float())

    def norm(self, sigma: torch.Tensor) -> torch.Tensor:
        return interpolate_log(self.norm_sigma.to(sigma.dtype), self.norm_value.to(sigma.dtype), sigma)

    def atom_score(self, batch: RefineBatch, u: torch.Tensor, sigma: torch.Tensor, pairs=None) -> torch.Tensor:
        """Per-atom fractional scores (N, 3) at free parameters u (S, 3), sigma per crystal (B,).

        The network predicts the normalized score s / sqrt(lambda(sigma)) (unit mean square for
        every sigma); multiplying by sqrt(lambda) gives the score, ~1/sigma for small sigma.
        Only the all-pairs network scores atoms; the site network scores free parameters.
        """
        if getattr(self.network, "site_level", False):
            raise TypeError("a 'sites' refiner scores free parameters, not atoms: use Refiner.score")
        t = self.network(batch.frac(u), sigma, batch.lattice, batch.species, batch.atom_batch, pairs)  # (N, 3)
        return t * self.norm(sigma).sqrt()[batch.atom_batch].unsqueeze(-1)

    def score(self, batch: RefineBatch, u: torch.Tensor, sigma: torch.Tensor, pairs=None) -> torch.Tensor:
        """Free-parameter scores (S, 3): per-atom scores projected and averaged over each orbit
        (all-pairs network), or the site network's scores of the free parameters."""
        if getattr(self.network, "site_level", False):
            t = self.network(batch, u, sigma, pairs)  # (S, 3) normalized, masked
            return t * self.norm(sigma).sqrt()[batch.site_batch].unsqueeze(-1)
        return batch.project(self.atom_score(batch, u, sigma, pairs))

    def inference_pairs(self, batch: RefineBatch):
        """What every score call on ``batch`` reuses at inference (dense blocks or a neighbour cache)."""
        if getattr(self.network, "site_level", False):
            return self.network.inference_pairs(batch)
        from .blocks import crystal_blocks

        return crystal_blocks(batch.atom_batch, batch.num_crystals)

    def loss(self, batch: RefineBatch, generator: torch.Generator | None = None,
             objective: str | None = None, sigma: float | None = None) -> torch.Tensor:
        """One Monte Carlo estimate of the training objective for a batch.

        t ~ U(0, 1) per crystal (sigma log-uniform on the schedule), or every crystal at ``sigma``
        when given (validation per noise level). Normalized: a zero score costs 1 at every sigma.
        """
        objective = objective or self.config.train.objective
        B = batch.num_crystals
        if sigma is None:
            t = torch.rand(B, generator=generator, dtype=batch.u.dtype, device=batch.u.device)
            sigma = self.sde.sigma(t)  # (B,)
        else:
            sigma = torch.full((B,), float(sigma), dtype=batch.u.dtype, device=batch.u.device)
        sig_rows = sigma[batch.site_batch].unsqueeze(-1)  # (S, 1)
        norm_rows = self.norm(sigma)[batch.site_batch].unsqueeze(-1)  # (S, 1)
        z = batch.noise(sig_rows, generator)
        pairs = None if getattr(self.network, "site_level", False) else pair_index(batch.atom_batch)
        if objective == "dsm":
            s = self.score(batch, z, sigma, pairs)
            return dsm_loss(s, z, batch.u, sig_rows, norm_rows, batch.mask)
        if objective == "ssm":
            return ssm_loss(lambda zz: self.score(batch, wrap(zz), sigma, pairs), z, norm_rows, batch.mask, generator)
        raise ValueError(f"unknown objective {objective!r}: 'dsm' or 'ssm'")
