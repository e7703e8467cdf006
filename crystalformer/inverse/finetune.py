"""Optional second route: fine-tune the prior toward a reward by reverse KL (DESIGN section 8).

The policy is the model as the sampler uses it: r_theta, the prior masked by the constraints
(space groups, element allow-list; without constraints r_theta = p_theta). With reward
r(X) = log p(y* | X) (the design targets' log-likelihood) and temperature T, the target is the
tempered posterior pi(X) ∝ p0(X) 1[X satisfies the constraints] exp(r(X) / T), p0 the frozen
prior, and fine-tuning minimises the reverse KL

    F(theta) = E_{X ~ r_theta}[ ln r_theta(X) - ln p0(X) - r(X) / T ] = KL(r_theta || pi) - ln Z,

DESIGN's F = E_p[-r + T ln p] measured against the prior (and divided by T). Its gradient by
the score function (REINFORCE; Williams 1992): the derivative of ln r_theta inside the
expectation contributes E[grad ln r_theta] = 0, so

    grad F = E[(ln r_theta(X) - ln p0(X) - r(X) / T - b) grad ln r_theta(X)],

unbiased for any baseline b that does not depend on X; we use the leave-one-out mean of the
batch. ln r_theta(X) = sum_t (log p_t - log Z_t) comes from one teacher-forced pass
(:func:`crystalformer.inverse.proposals.stream_terms`), so coordinates and lattice densities are
trained as well as the discrete choices. The result is a new prior (a model directory) whose
plain samples lean toward the targets; Metropolis-Hastings on top of it stays exact for its
own posterior.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..sampling.constraints import Constraint, ConstraintMasks
from .mcmc import decodable
from .proposals import decode_after, stream_masks, stream_terms


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    temperature: float = 1.0
    """T: the reward is divided by it; small T follows the reward, large T stays near the prior."""
    grad_clip: float = 1.0
    seed: int = 0
    trainable: str = "token_head"
    """"all" parameters, or only the "token_head" (the discrete choices: space group, Wyckoff letters,
    elements). The reward usually depends on discrete choices; training only their head leaves the
    coordinate and lattice densities exactly as in the prior and lowers the estimator's variance."""

    def __post_init__(self):
        if self.trainable not in ("all", "token_head"):
            raise ValueError(f"trainable must be 'all' or 'token_head', got {self.trainable!r}")
        finite = all(math.isfinite(x) for x in (self.lr, self.temperature, self.grad_clip))
        if not finite or self.steps < 1 or not 2 <= self.batch_size <= 100_000 or self.lr <= 0 or self.temperature <= 0 \
                or self.grad_clip < 0:
            raise ValueError(f"need steps >= 1, batch_size 2 to 100,000, lr > 0, temperature > 0, grad_clip >= 0; got {self}")


@dataclass
class FinetuneResult:
    model: object  # the fine-tuned CrystalFormer (eval mode)
    history: list[dict] = field(default_factory=list)  # per step: objective, reward, KL to the prior
    wall_s: float = 0.0


def finetune(prior, log_likelihood, config: FinetuneConfig | None = None, space_groups=None, elements=None,
             progress: bool = False) -> FinetuneResult:
    """A copy of ``prior`` trained to minimise KL(r_theta || pi) (module docstring); ``prior`` is not changed.

    ``log_likelihood``: the reward, a callable from (ids, values) streams to an (N,) array.
    """
    config = config or FinetuneConfig()
    t0 = time.time()
    if isinstance(space_groups, int):
        space_groups = [space_groups]
    masks = ConstraintMasks.compile(Constraint(None if space_groups is None else frozenset(map(int, space_groups)),
                                               None if elements is None else frozenset(elements)), prior.grammar)
    reference = prior.eval()
    policy = copy.deepcopy(prior).eval()  # eval: no dropout, so ln r_theta is the density the sampler draws from
    params = list(policy.parameters() if config.trainable == "all" else policy.token_head.parameters())
    for p in policy.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    generator = torch.Generator(device=policy.device).manual_seed(config.seed)
    history = []
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="finetune", unit="step")
    for step in steps:
        drawn = decode_after(policy, [([policy.grammar.bos], [0.0])] * config.batch_size, masks, generator)
        keep = [i for i in range(len(drawn)) if np.isfinite(drawn.log_w[i].sum())
                and decodable(policy, drawn.ids[i], drawn.values[i])]
        if len(keep) < 2:
            continue
        streams = [(drawn.ids[i], drawn.values[i]) for i in keep]
        reward = torch.as_tensor(log_likelihood(streams), dtype=torch.float64)
        if not bool(torch.isfinite(reward).all()):
            raise ValueError(f"the reward is not finite for {int((~torch.isfinite(reward)).sum())} crystals")
        struct, allow = zip(*(stream_masks(policy, ids, masks) for ids, _ in streams))
        lp, lw = stream_terms(policy, streams, struct, allow)
        log_r = (lp - lw).sum(1)  # (n,) ln r_theta(X), differentiable
        with torch.no_grad():
            log_p0 = stream_terms(reference, streams, struct, allow)[0].sum(1)  # (n,)
        f = log_r.detach() - log_p0 - reward / config.temperature  # (n,)
        n = f.shape[0]
        baseline = (f.sum() - f) / (n - 1)  # leave-one-out: independent of X_i
        loss = ((f - baseline) * log_r).mean()
        opt.zero_grad()
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        row = {"step": step, "objective": float(f.mean()), "reward": float(reward.mean()),
               "kl_to_prior": float((log_r.detach() - log_p0).mean()), "kept": n}
        if not math.isfinite(row["objective"]):
            raise FloatingPointError(f"fine-tuning objective became {row['objective']} at step {step}; lower lr")
        history.append(row)
        if progress:
            steps.set_postfix(F=f"{row['objective']:.2f}", reward=f"{row['reward']:.2f}")
    return FinetuneResult(policy.eval(), history, time.time() - t0)
