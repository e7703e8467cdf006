"""Training a property model from a numeric column of CDVAE CSV files (or prepared directories).

``train_property`` prepares the inputs (cached, as for the generative model), reads the column
from each crystal's stored properties, drops rows whose value is missing (counted), trains a
:class:`PropertyNet` with AdamW and a cosine schedule in a plain torch loop (minutes on a CPU;
no checkpoints to resume), keeps the epoch with the lowest validation MAE, calibrates sigma on
the validation residuals and writes a property model directory.

Coverage reported in the metadata is measured out of sample by cross-fitting: sigma fitted on
one half of the validation set, coverage counted on the other half, and vice versa.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .property import (
    PropertyConfig,
    PropertyModel,
    PropertyNet,
    collate_streams,
    gaussian_sigma,
    stream_examples,
)


@dataclass
class PropertyResult:
    model_dir: Path
    target: str
    val_mae: float
    baseline_mae: float  # MAE of predicting the training mean
    sigma: float
    coverage_1sigma: float  # cross-fitted, out of sample
    coverage_2sigma: float
    num_train: int
    num_val: int
    dropped: int  # crystals without a numeric value of the target
    wall_s: float

    def table(self) -> str:
        rows = [("target", self.target), ("train / val crystals", f"{self.num_train} / {self.num_val}"),
                ("dropped (no value)", str(self.dropped)), ("val MAE", f"{self.val_mae:.4f}"),
                ("mean-predictor MAE", f"{self.baseline_mae:.4f}"), ("sigma (calibrated)", f"{self.sigma:.4f}"),
                ("coverage ±1 sigma", f"{self.coverage_1sigma:.3f} (cross-fitted; Gaussian 0.683)"),
                ("coverage ±2 sigma", f"{self.coverage_2sigma:.3f} (Gaussian 0.954)"),
                ("wall time", f"{self.wall_s:.0f} s"), ("model", str(self.model_dir))]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def read_targets(dirs, target: str) -> tuple[list[tuple], np.ndarray, int]:
    """Streams (ids, values) and target values of every crystal with a numeric ``target``; and the number dropped.

    ValueError names the column when no crystal has it or its values are not numbers.
    """
    from ..data import load_prepared

    streams, ys, dropped, seen = [], [], 0, set()
    for d in dirs:
        data = load_prepared(d)
        for i, rec in enumerate(data.records):
            props = rec.get("properties") or {}
            seen.update(props)
            if target not in props:
                dropped += 1
                continue
            value = props[target]
            if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
                raise ValueError(f"column {target!r} is not numeric: {value!r} in {d} ({rec.get('material_id')})")
            if value is None or not math.isfinite(float(value)):
                dropped += 1
                continue
            ids, values, _ = data.stream(i)
            streams.append((ids, values))
            ys.append(float(value))
    if not ys:
        known = sorted(k for k in seen)
        raise ValueError(f"no crystal has a numeric {target!r}; columns found: {', '.join(known) or 'none'}")
    return streams, np.asarray(ys), dropped


def check_csv_column(path, target: str) -> None:
    """For a CSV input: ValueError when ``target`` is not one of its columns or holds no numbers."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return
    head = pd.read_csv(path, nrows=50)
    columns = [c for c in head.columns if c != "cif" and not str(c).startswith("Unnamed")]
    if target not in head.columns:
        raise ValueError(f"{path}: no column {target!r}; its columns are {', '.join(map(str, columns))}")
    if not pd.api.types.is_numeric_dtype(head[target]):
        raise ValueError(f"{path}: column {target!r} is not numeric (e.g. {head[target].iloc[0]!r})")


def train_property(data, target: str, out, config: PropertyConfig | None = None, val=None, cache_dir=None,
                   overwrite: bool = False, progress: bool = True, device: str = "cpu") -> PropertyResult:
    """Train a property model of column ``target`` on ``data`` (CSV / CIF / prepared dirs) into ``out``.

    ``device``: the torch device to train on; the saved model is on the CPU either way.
    """
    from ..data import PrepareConfig, as_prepared, default_cache_dir

    config = config or PropertyConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite (overwrite=True) to replace it")
    t0 = time.time()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    as_list = (lambda x: [x] if isinstance(x, (str, Path)) else list(x))
    for path in as_list(data) + as_list(val or []):
        check_csv_column(path, target)
    train_dirs = as_prepared(as_list(data), cache_dir, PrepareConfig(), progress=progress, announce=progress)
    streams, y, dropped = read_targets(train_dirs, target)
    if val is not None:
        val_streams, y_val, d2 = read_targets(as_prepared(as_list(val), cache_dir, PrepareConfig(), progress=progress, announce=progress),
                                              target)
        dropped += d2
    else:
        order = np.random.default_rng(config.seed).permutation(len(y))
        n_val = max(1, int(round(config.val_fraction * len(y))))
        if n_val >= len(y):
            raise ValueError(f"{len(y)} crystals with {target!r}: too few to hold out a validation set")
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        val_streams, y_val = [streams[i] for i in val_idx], y[val_idx]
        streams, y = [streams[i] for i in train_idx], y[train_idx]
    from ..data import load_prepared

    tokenizer = load_prepared(train_dirs[0]).tokenizer
    longest = max(len(s[0]) for s in streams + val_streams)
    if longest > config.max_len:
        raise ValueError(f"the longest stream has {longest} tokens > max_len={config.max_len}; raise max_len")
    mean, std = float(y.mean()), float(y.std()) or 1.0
    torch.manual_seed(config.seed)
    net = PropertyNet(config, tokenizer)
    state, val_mae, epochs_run = _fit(net, streams, (y - mean) / std, val_streams, y_val, mean, std, config, progress,
                                      torch.device(device))
    net.cpu().load_state_dict(state)
    model = PropertyModel(net, {"target": target, "mean": mean, "std": std, "sigma": 1.0})
    pred_val = model.predict_streams(val_streams)
    residuals = y_val - pred_val
    sigma = gaussian_sigma(residuals, config.coverage)
    cov1, cov2 = _cross_fitted_coverage(residuals, config.coverage, config.seed)
    baseline = float(np.mean(np.abs(y_val - mean)))
    wall = time.time() - t0
    model.metadata.update({
        "sigma": sigma, "val_mae": float(np.mean(np.abs(residuals))), "baseline_mae": baseline,
        "coverage_target": config.coverage, "coverage_1sigma": cov1, "coverage_2sigma": cov2,
        "train_quantiles": np.quantile(y, np.linspace(0, 1, 101)).tolist(),
        "train_min": float(y.min()), "train_max": float(y.max()), "num_train": len(y), "num_val": len(y_val),
        "dropped": dropped, "epochs": epochs_run, "data": [str(p) for p in as_list(data)],
        "val": None if val is None else [str(p) for p in as_list(val)],
        "config": asdict(config), "wall_s": round(wall, 1), "threads": torch.get_num_threads()})
    model.save(out)
    return PropertyResult(out, target, model.metadata["val_mae"], baseline, sigma, cov1, cov2, len(y), len(y_val),
                          dropped, wall)


def _fit(net, streams, z, val_streams, y_val, mean, std, config: PropertyConfig, progress: bool,
         device: torch.device = torch.device("cpu")):
    """AdamW + warm-up and cosine decay; returns the (CPU) state of the epoch with the lowest validation MAE."""
    from ..model.batching import collate
    from ..schedule import warmup_cosine

    tokenizer = net.tokenizer
    examples = stream_examples(tokenizer, streams)
    net.to(device)
    z_t = torch.as_tensor(z, dtype=torch.float32, device=device)
    val_batches = [{k: v.to(device) for k, v in collate_streams(tokenizer, val_streams[i:i + 512]).items()}
                   for i in range(0, len(val_streams), 512)]
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(streams) / config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup=steps_per_epoch))
    loss_fn = {"huber": torch.nn.functional.huber_loss, "mse": torch.nn.functional.mse_loss,
               "l1": torch.nn.functional.l1_loss}[config.loss]
    g = torch.Generator().manual_seed(config.seed)
    best, best_state = math.inf, None
    epochs = range(config.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="train-property", unit="epoch")
    for _ in epochs:
        net.train()
        order = torch.randperm(len(streams), generator=g)
        for k in range(0, len(streams), config.batch_size):
            idx = order[k:k + config.batch_size]
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx.tolist()], tokenizer.pad_id).items()}
            pred = net(batch["ids"], batch["values"], batch["slots"], batch["mask"])
            loss = loss_fn(pred, z_t[idx.to(device)])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(b["ids"], b["values"], b["slots"], b["mask"]) for b in val_batches]).double().cpu().numpy()
        mae = float(np.mean(np.abs(pred * std + mean - y_val)))
        if not math.isfinite(mae):
            raise FloatingPointError(f"validation MAE became {mae}: training diverged; lower lr")
        if mae < best:
            best, best_state = mae, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if progress:
            epochs.set_postfix(val_mae=f"{mae:.4f}", best=f"{best:.4f}")
    return best_state, best, config.epochs


def _cross_fitted_coverage(residuals: np.ndarray, coverage: float, seed: int) -> tuple[float, float]:
    """Fractions of |r| within sigma and 2 sigma, sigma fitted on the other half (two folds)."""
    r = np.abs(residuals)
    if r.size < 4:
        return float("nan"), float("nan")
    order = np.random.default_rng(seed + 7).permutation(r.size)
    halves = (order[: r.size // 2], order[r.size // 2:])
    hit1 = hit2 = 0
    for fit, test in (halves, halves[::-1]):
        s = gaussian_sigma(r[fit], coverage)
        hit1 += int(np.sum(r[test] <= s))
        hit2 += int(np.sum(r[test] <= 2 * s))
    return hit1 / r.size, hit2 / r.size
