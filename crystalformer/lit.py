"""Thin LightningModule around :class:`~crystalformer.model.CrystalFormer`.

All modelling lives in the pure-torch model (``model.loss(batch)``); this wrapper adds the
optimiser (AdamW, weight decay on matrices only), the learning-rate schedule (linear warm-up,
cosine decay to ``lr * min_lr_ratio``), logging of the NLL per slot type, and the NaN guard.
"""

from __future__ import annotations

import lightning as L
import torch

from .config import ModelConfig, TrainConfig, config_from_dict, config_to_dict
from .model import CrystalFormer
from .model.crystalformer import SCORED_SLOTS
from .schedule import warmup_cosine
from .tokenizer import CrystalTokenizer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class CrystalFormerModule(L.LightningModule):
    def __init__(self, model_config: dict, train_config: dict, vocab: list[str]):
        super().__init__()
        # plain dicts and lists: the checkpoint's hyper-parameters need no classes to be read back
        self.save_hyperparameters()
        self.model_config = config_from_dict(ModelConfig, model_config)
        self.train_config = config_from_dict(TrainConfig, train_config)
        self.model = CrystalFormer(self.model_config, CrystalTokenizer(vocab=list(vocab)))
        self._val_sums: dict[str, float] = {}
        self.time_fraction = None  # () -> fraction of the time budget spent (set by train() when there is one)

    @classmethod
    def create(cls, model_config: ModelConfig, train_config: TrainConfig, tokenizer: CrystalTokenizer):
        return cls(config_to_dict(model_config), config_to_dict(train_config), list(tokenizer.vocab))

    def configure_model(self):
        # in place (nn.Module.compile): parameter names, checkpoints and exports stay as without it
        if self.train_config.compile and not getattr(self, "_compiled", False):
            self.model.transformer.compile(dynamic=True)
            self._compiled = True

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx):
        loss, lp = self.model.loss(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"training loss is {loss.item()} at step {self.global_step} (epoch "
                                     f"{self.current_epoch}); the last good checkpoint is kept")
        B = batch["ids"].shape[0]
        self.log("train/nll", loss, prog_bar=True, batch_size=B)
        for name, v in lp.by_slot.items():
            self.log(f"train/nll_{name}", -v.mean(), batch_size=B)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=B)
        return loss

    def on_validation_epoch_start(self):
        self._val_sums = {"n": 0.0, "tokens": 0.0, "nll": 0.0, **{k: 0.0 for k in SCORED_SLOTS}}

    def validation_step(self, batch, batch_idx):
        lp = self.model.log_prob_batch(batch)
        s = self._val_sums
        s["n"] += lp.total.numel()
        s["tokens"] += float(lp.num_tokens.sum())
        s["nll"] += float(-lp.total.sum())
        for k, v in lp.by_slot.items():
            s[k] += float(-v.sum())

    def on_validation_epoch_end(self):
        s = self._val_sums
        if not s.get("n"):
            return
        sums = torch.tensor([s["n"], s["tokens"], s["nll"], *(s[k] for k in SCORED_SLOTS)], device=self.device)
        sums = self.all_gather(sums).reshape(-1, sums.numel()).sum(0) if self.trainer.world_size > 1 else sums
        n, tokens, nll = sums[0], sums[1], sums[2]
        self.log("val/nll", nll / n, prog_bar=True, sync_dist=False)
        self.log("val/nll_per_token", nll / tokens, sync_dist=False)
        for i, k in enumerate(SCORED_SLOTS):
            self.log(f"val/nll_{k}", sums[3 + i] / n, sync_dist=False)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        cfg = self.train_config
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        try:  # the fused kernel: one pass over all parameters per step (CPU since torch 2.4, and CUDA)
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=True)
        except (RuntimeError, TypeError):
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        def factor(step: int) -> float:
            return lr_factor(step, total, cfg, self.time_fraction() if self.time_fraction is not None else 0.0)

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def lr_factor(step: int, total: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``total`` steps.

    ``time_fraction``: the part of a time budget already spent; the decay follows whichever of
    steps and time is further along, so a budgeted run ends at the low learning rate.
    """
    return warmup_cosine(step, total, cfg.warmup_steps, cfg.min_lr_ratio, time_fraction)
