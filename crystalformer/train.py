"""Training runs: a typed function over Lightning's Trainer.

A run directory holds::

    run.json                 model + train configs and the data the run reads (resume reads it back)
    logs/version_N/metrics.csv  train/val NLL per slot type, learning rate (one version per start or resume)
    checkpoints/last.ckpt    the last good checkpoint (every epoch and every ``checkpoint_every`` steps)
    model/                   the best model by validation NLL, as a model directory (safetensors)
    summary.json             wall time, steps, best validation NLL, parameter count

A NaN or infinite loss stops the run with :class:`~crystalformer.lit.NonFiniteLossError`;
``checkpoints/last.ckpt`` then still holds the last good state.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from .config import ModelConfig, TrainConfig, config_from_dict, config_to_dict
from .hardware import describe
from .quiet import quietly

RUN_FILE = "run.json"


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    best_val_nll: float | None
    steps: int
    epochs: int
    wall_s: float
    num_parameters: int


class ExportBest(L.Callback):
    """Exports the model as a model directory whenever the validation NLL improves (or at the end without one)."""

    def __init__(self, out: Path, metadata: dict, clock: WallClock):
        self.out, self.metadata, self.clock = Path(out), metadata, clock
        self.best: float | None = None

    def _export(self, trainer: L.Trainer, module, metrics: dict) -> None:
        if trainer.is_global_zero:
            meta = {**self.metadata, "step": trainer.global_step, "epoch": trainer.current_epoch,
                    "metrics": metrics, "train_wall_s": round(self.clock.total, 1)}
            module.model.save(self.out, meta)

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking or "val/nll" not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics["val/nll"])
        if self.best is None or value < self.best:
            self.best = value
            metrics = {k: round(float(v), 5) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self._export(trainer, module, metrics)

    def on_train_end(self, trainer, module):
        if self.best is None:  # no validation data: the final model is the one we have
            self._export(trainer, module, {})

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")


class TimeBudget(L.Callback):
    """Stops training once the run's wall time (summed over resumes) reaches ``minutes``."""

    def __init__(self, minutes: float, clock: WallClock):
        self.seconds, self.clock = 60.0 * minutes, clock
        self.hit = False

    def fraction(self) -> float:
        return min(1.0, self.clock.total / self.seconds)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.clock.total >= self.seconds:
            self.hit = True
            trainer.should_stop = True


class WallClock(L.Callback):
    """Training wall time summed over every start and resume of a run (stored in the checkpoints)."""

    def __init__(self):
        self.before, self.t0 = 0.0, time.time()

    @property
    def total(self) -> float:
        return self.before + time.time() - self.t0

    def state_dict(self) -> dict:
        return {"elapsed": self.total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before, self.t0 = float(state_dict.get("elapsed", 0.0)), time.time()


def _precision(requested: str) -> str:
    if requested != "auto":
        return requested
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _run_config(run_dir: Path) -> dict:
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {RUN_FILE}: nothing to resume")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable run record ({err})") from None
    missing = [k for k in ("model", "train", "data") if not isinstance(stored, dict) or k not in stored]
    if missing:
        raise ValueError(f"{path}: not a run record of this package (missing {', '.join(missing)})")
    return stored


@quietly
def train(data, out, model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
          val=None, val_fraction: float = 0.05, resume: bool = False, overwrite: bool = False,
          cache_dir=None, progress: bool = True, checkpoint_every: int = 500, init=None) -> TrainResult:
    """Train a CrystalFormer on ``data`` (CSV files, CIF folders or prepared directories) into run dir ``out``.

    ``val``: validation inputs; without them ``val_fraction`` of the training crystals are held
    out. ``resume``: continue ``out`` from ``checkpoints/last.ckpt`` with the data and model
    config stored in ``run.json``; a ``train_config`` given then replaces the stored one (to
    extend a finished run with more epochs, say). ``init``: a model directory whose weights
    (and model config) the run starts from, with a new optimiser: to continue training on
    other data, another machine or another day. ``train_config.time_budget_min`` stops the
    run cleanly when its wall time is spent (the best model so far is exported).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .checkpoint import check_checkpoint, fit_kwargs
    from .datamodule import CrystalDataModule
    from .lit import CrystalFormerModule

    out = Path(out)
    last = out / "checkpoints" / "last.ckpt"
    if resume:
        stored = _run_config(out)
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume {out}: {last} does not exist")
        check_checkpoint(last)  # before anything unpickles it
        stored_model, stored_train = load_run_configs(out)
        if model_config is not None and dataclasses.replace(model_config, vocab_size=stored_model.vocab_size) \
                != stored_model:
            raise ValueError(f"cannot resume {out} with a different model config; stored: {stored_model}")
        model_config = stored_model
        train_config = train_config or stored_train  # e.g. more epochs to extend a finished run
        data, val, val_fraction = stored["data"], stored["val"], stored["val_fraction"]
        init = None  # the checkpoint holds the weights; run.json keeps where they started
    else:
        # DDP re-launches this program once per extra rank (after rank 0 has written the run
        # directory): only rank 0 checks it
        if _rank() == 0 and out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"run directory {out} is not empty; pass resume=True (--resume) to continue it "
                                  "or overwrite=True (--overwrite) to start again")
        train_config = train_config or TrainConfig.from_name("small")
        if init is not None:
            from .defaults import resolve_model

            init = resolve_model(init)  # a model directory or a shipped name
            model_config = _init_config(init, model_config)
        model_config = model_config or ModelConfig.from_name("small")
    data = [str(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
    val = None if val is None else [str(p) for p in ([val] if isinstance(val, (str, Path)) else val)]
    if not data:
        raise ValueError("train needs at least one data input")

    L.seed_everything(train_config.seed, workers=True, verbose=False)
    dm = CrystalDataModule(data, val, batch_size=train_config.batch_size, num_workers=train_config.num_workers,
                           prompt_fraction=train_config.prompt_fraction, seed=train_config.seed,
                           cache_dir=cache_dir, val_fraction=0.0 if val else val_fraction,
                           bucket=train_config.bucket)
    dm.prepare_data()
    dm.setup("fit")
    tokenizer = dm.train_set.parts[0].tokenizer
    model_config = _fit_to_data(model_config, dm, tokenizer)
    module = CrystalFormerModule.create(model_config, train_config, tokenizer)
    lineage = []
    if init is not None:
        lineage = _load_init(module.model, init)
    # no masks in the batches: the model computes them on its device from tables (model/masks.py)

    out.mkdir(parents=True, exist_ok=True)
    run = {"model": config_to_dict(model_config), "train": config_to_dict(train_config), "data": data,
           "val": val, "val_fraction": val_fraction}
    init_record = None if init is None else str(init)
    if resume:
        lineage, init_record = stored.get("lineage", []), stored.get("init")
    run["lineage"], run["init"] = lineage, init_record
    if _rank() == 0:
        (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    metadata = {"data": data, "val": val or f"{val_fraction:.0%} of the training crystals held out",
                "num_train": len(dm.train_set), "num_val": 0 if dm.val_set is None else len(dm.val_set),
                "train_config": config_to_dict(train_config), "hardware": describe(),
                "init": init_record, "lineage": lineage}
    clock = WallClock()
    export = ExportBest(out / "model", metadata, clock)
    budget = TimeBudget(train_config.time_budget_min, clock) if train_config.time_budget_min > 0 else None
    if budget is not None:
        module.time_fraction = budget.fraction
    checkpoints = [ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_last=False,
                                   every_n_epochs=1, save_top_k=1, enable_version_counter=False),
                   ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1,
                                   every_n_train_steps=checkpoint_every, enable_version_counter=False)]
    trainer = L.Trainer(
        max_epochs=train_config.max_epochs, max_steps=train_config.max_steps,
        accelerator=train_config.accelerator, devices=train_config.devices, strategy=train_config.strategy,
        num_nodes=train_config.num_nodes,
        precision=_precision(train_config.precision), gradient_clip_val=train_config.grad_clip or None,
        check_val_every_n_epoch=train_config.val_every_epochs, log_every_n_steps=train_config.log_every_steps,
        logger=CSVLogger(save_dir=str(out), name="logs"),
        callbacks=[*checkpoints, clock, export, *([budget] if budget is not None else [])],
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the data module shards global batches itself (RankShard)
        default_root_dir=str(out))
    t0 = time.time()
    trainer.fit(module, datamodule=dm, **fit_kwargs(trainer, last if resume else None))
    if budget is not None and budget.hit:
        # stopped inside an epoch: validate the final weights (the best model is exported if they
        # are the best) and keep a checkpoint of exactly where the run stopped
        if dm.val_set is not None:
            trainer.validate(module, datamodule=dm, verbose=False)
        trainer.save_checkpoint(last)
    wall = time.time() - t0
    result = TrainResult(out, out / "model", export.best, trainer.global_step, trainer.current_epoch, wall,
                         module.model.num_parameters())
    if trainer.is_global_zero:
        summary = {"best_val_nll": export.best, "steps": result.steps, "epochs": result.epochs,
                   "stopped_by_time_budget": bool(budget is not None and budget.hit),
                   "wall_s": round(wall, 1), "total_wall_s": round(clock.total, 1), "num_parameters": result.num_parameters, **metadata}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result


def _rank() -> int:
    """This process's global rank as the launcher set it in the environment (0 without one)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _init_config(init, requested: ModelConfig | None) -> ModelConfig:
    """The model config of the ``init`` model directory; a differently shaped request is an error."""
    from .model.files import read_config

    stored = read_config(Path(init))
    if requested is None:
        return stored
    shape = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("dropout", "vocab_size")]
    differ = [name for name in shape if getattr(requested, name) != getattr(stored, name)]
    if differ:
        raise ValueError(f"--init {init}: its model has {', '.join(f'{n}={getattr(stored, n)}' for n in differ)}; "
                         f"the requested config differs there (weights can only start a model of the same shape)")
    return dataclasses.replace(stored, dropout=requested.dropout)


def _load_init(model, init) -> list[dict]:
    """Copy the weights of model directory ``init`` into ``model``; returns the training lineage so far."""
    from .model.files import load_model, read_metadata

    source = load_model(init)  # names the file on any unreadable or mismatched part
    if list(source.tokenizer.vocab) != list(model.tokenizer.vocab):
        raise ValueError(f"--init {init}: its tokenizer differs from the training data's vocabulary "
                         f"({source.tokenizer.vocab_size} against {model.tokenizer.vocab_size} tokens)")
    model.load_state_dict(source.state_dict(), strict=True)  # same shape: _init_config checked it
    meta = read_metadata(init)
    previous = list(meta.get("lineage", []))
    previous.append({"model": str(init), "data": meta.get("data"), "hardware": meta.get("hardware"),
                     "train_wall_s": meta.get("train_wall_s"), "steps": meta.get("step"),
                     "val_nll": (meta.get("metrics") or {}).get("val/nll")})
    return previous


def load_run_configs(run_dir) -> tuple[ModelConfig, TrainConfig]:
    """The model and train configs a run directory was started (or last resumed) with."""
    stored = _run_config(Path(run_dir))
    try:
        return config_from_dict(ModelConfig, stored["model"]), config_from_dict(TrainConfig, stored["train"])
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"{Path(run_dir) / RUN_FILE}: stored configs do not load ({err})") from None


def _fit_to_data(config: ModelConfig, dm, tokenizer) -> ModelConfig:
    """Take the vocabulary size from the data and check that every stream fits ``max_len``."""
    longest = max(int(ds.stream_lengths()[1].max()) for ds in (dm.train_set, dm.val_set) if ds is not None and len(ds))
    if longest > config.max_len:
        raise ValueError(f"the longest token stream in the data (with its prompt) has {longest} tokens, more than "
                         f"max_len={config.max_len}; raise max_len or drop the largest crystals")
    return dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
