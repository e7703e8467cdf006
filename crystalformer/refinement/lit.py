"""Thin LightningModule around :class:`Refiner`: loss, optimizer, LR warm-up + cosine decay, NaN guard."""

from __future__ import annotations

import lightning as L
import torch

from ..schedule import warmup_cosine
from .config import RefinerConfig
from .model import Refiner


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss is NaN or infinite; the last good checkpoint is kept."""


MIN_LR_RATIO = 0.05  # the cosine decays to 5 % of the peak learning rate


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % at ``total`` (:func:`warmup_cosine`)."""
    return warmup_cosine(step, total, warmup, MIN_LR_RATIO)


class RefinerModule(L.LightningModule):
    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters()  # a plain dict: checkpoints carry the config
        self.config = RefinerConfig.from_dict(config)
        self.refiner = Refiner(self.config)
        self.val_generator_seed = 12345

    def training_step(self, batch, batch_idx):
        loss = self.refiner.loss(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite training loss {loss.item()} at step {self.global_step} "
                                     f"(batch {batch_idx}); the last good checkpoint is kept in the run dir")
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.num_crystals)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=batch.num_crystals)
        return loss

    def on_validation_epoch_start(self):
        # the same noise every validation: val losses comparable across epochs
        self._val_gen = torch.Generator(device=self.device).manual_seed(self.val_generator_seed)

    def validation_step(self, batch, batch_idx):
        loss = self.refiner.loss(batch, generator=self._val_gen, objective="dsm")
        self.log("val_loss", loss, prog_bar=True, batch_size=batch.num_crystals)
        return loss

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)

    def configure_optimizers(self):
        cfg = self.config.train
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
