"""``train_refiner``: typed training function (Lightning Trainer, CSV logs, best model exported)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..quiet import quietly
from .config import RefinerConfig


@dataclass
class RefinerTrainResult:
    run_dir: Path
    model_dir: Path
    best_val_loss: float | None
    epochs: int
    steps: int
    wall_seconds: float


def _export_callback(model_dir: Path, meta: dict):
    import lightning as L

    from .io import save_refiner

    class ExportBest(L.Callback):
        """After each validation: export the refiner to ``model_dir`` when val_loss improved."""

        def __init__(self):
            self.best = float("inf")

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            val = trainer.callback_metrics.get("val_loss")
            if val is not None and float(val) < self.best:
                self.best = float(val)
                save_refiner(pl_module.refiner, model_dir,
                             {**meta, "val_dsm_loss": self.best, "epoch": trainer.current_epoch,
                              "step": trainer.global_step})

        def state_dict(self):
            return {"best": self.best}

        def load_state_dict(self, state):
            self.best = state["best"]

    return ExportBest()


def _has_free_params(crystal) -> bool:
    return any(len(site.params) for site in crystal.sites)


@quietly
def train_refiner(data, out, config: RefinerConfig | None = None, val=None, resume: bool = False,
                  overwrite: bool = False, cache_dir=None, progress: bool = True,
                  checkpoint_every: int = 200, device: str | None = None) -> RefinerTrainResult:
    """Train a refiner on ``data`` (CSV / CIF / prepared dirs) into run dir ``out``.

    ``out/model`` receives the best refiner by validation DSM loss; ``out/checkpoints/last.ckpt``
    is written every ``checkpoint_every`` steps and at the end; ``resume`` continues from it
    with the stored config and data (a ``config`` given replaces the stored training section).
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from ..checkpoint import check_checkpoint, fit_kwargs
    from .data import load_crystals, loader
    from .lit import RefinerModule

    out = Path(out)
    last = out / "checkpoints" / "last.ckpt"
    run_file = out / "run.json"
    if resume:
        if not last.is_file() or not run_file.is_file():
            raise FileNotFoundError(f"cannot resume {out}: needs {last} and {run_file}")
        check_checkpoint(last)  # before anything unpickles it
        stored = json.loads(run_file.read_text())
        stored_cfg = RefinerConfig.from_dict(stored["config"])
        if config is not None:
            if config.network != stored_cfg.network or config.sde != stored_cfg.sde:
                raise ValueError(f"cannot resume {out} with a different network/SDE config; stored: {stored_cfg}")
            stored_cfg.train = config.train
        config, data, val = stored_cfg, stored["data"], stored["val"]
    else:
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"run directory {out} is not empty (use --overwrite or --resume)")
        config = config or RefinerConfig.from_name("sites")
        if not data:
            raise ValueError("train_refiner needs training data")
        data = [str(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
        val = [str(p) for p in ([val] if isinstance(val, (str, Path)) else val)] if val else None
        out.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"config": config.to_dict(), "data": data, "val": val}, indent=2))
    cfg = config.train
    crystals = load_crystals(data, cache_dir, cfg.max_atoms, progress)
    if val:
        val_crystals = load_crystals(val, cache_dir, cfg.max_atoms, progress)
    else:
        perm = torch.randperm(len(crystals), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        n_val = max(1, int(round(cfg.val_fraction * len(crystals))))
        val_crystals = [crystals[i] for i in perm[:n_val]]
        crystals = [crystals[i] for i in perm[n_val:]]
    # crystals whose sites all sit on fixed Wyckoff positions (e.g. cubic perovskites) have no
    # free parameter: their DSM terms are empty, so they would only cost network calls
    n_fixed = sum(not _has_free_params(c) for c in crystals) + sum(not _has_free_params(c) for c in val_crystals)
    crystals = [c for c in crystals if _has_free_params(c)]
    val_crystals = [c for c in val_crystals if _has_free_params(c)]
    if progress and n_fixed:
        print(f"skipped {n_fixed} crystals without free Wyckoff parameters (nothing to refine)")
    if not crystals or not val_crystals:
        raise ValueError(f"no usable training ({len(crystals)}) or validation ({len(val_crystals)}) crystals "
                         f"in {data} (max_atoms={cfg.max_atoms})")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = RefinerModule(config.to_dict())
    meta = {"data": data, "val": val, "n_train": len(crystals), "n_val": len(val_crystals), "n_fixed_skipped": n_fixed,
            "parameters": sum(p.numel() for p in module.refiner.parameters())}
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, every_n_train_steps=checkpoint_every,
                           save_top_k=0, save_on_train_epoch_end=True)
    from ..options import lightning_device

    accelerator, devices = lightning_device(device) if device is not None else ("auto", 1)
    trainer = L.Trainer(max_epochs=cfg.max_epochs, accelerator=accelerator, devices=devices,
                        gradient_clip_val=cfg.grad_clip,
                        logger=CSVLogger(out, name="logs"), callbacks=[ckpt, _export_callback(out / "model", meta)],
                        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10,
                        max_time={"minutes": cfg.max_time_minutes} if cfg.max_time_minutes else None,
                        default_root_dir=out)
    start = time.time()
    trainer.fit(module, loader(crystals, cfg.batch_size, True, cfg.seed, cfg.num_workers),
                loader(val_crystals, cfg.batch_size, False, cfg.seed, cfg.num_workers),
                **fit_kwargs(trainer, last if resume else None))
    trainer.save_checkpoint(last)
    best = next((cb.best for cb in trainer.callbacks if type(cb).__name__ == "ExportBest"), None)
    return RefinerTrainResult(out, out / "model", None if best in (None, float("inf")) else best,
                              trainer.current_epoch, trainer.global_step, time.time() - start)
