"""Batches of token streams from prepared directories: Dataset, collate, LightningDataModule.

Whether an example carries its composition prompt is drawn per (seed, epoch, index) from its
own ``numpy`` generator, so batches are reproducible and identical with any number of
DataLoader worker processes; call ``set_epoch`` to draw afresh each epoch.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from .data import PrepareConfig, load_prepared, prepare


class CrystalDataset(torch.utils.data.Dataset):
    """Token streams of one or more prepared directories."""

    def __init__(self, prepared_dirs, prompt_fraction: float = 0.5, seed: int = 0):
        if not 0.0 <= prompt_fraction <= 1.0:
            raise ValueError(f"prompt_fraction must be in [0, 1], got {prompt_fraction}")
        dirs = [prepared_dirs] if isinstance(prepared_dirs, (str, Path)) else list(prepared_dirs)
        self.parts = [load_prepared(d) for d in dirs]
        self.index = [(p, i) for p, part in enumerate(self.parts) for i in range(len(part))]
        self.prompt_fraction = prompt_fraction
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def with_prompt(self, idx: int) -> bool:
        if self.prompt_fraction in (0.0, 1.0):
            return self.prompt_fraction == 1.0
        return bool(np.random.default_rng([self.seed, self.epoch, idx]).random() < self.prompt_fraction)

    def __getitem__(self, idx: int) -> dict:
        part, i = self.index[idx]
        ids, values, slots = self.parts[part].stream(i, with_prompt=self.with_prompt(idx))
        return {"ids": ids, "values": values, "slots": slots,
                "num_atoms": int(self.parts[part].tensors["num_atoms"][i])}


def collate(examples: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest stream: ids (B, T) long, values (B, T) float32, slots (B, T) long, mask (B, T) bool."""
    B = len(examples)
    T = max(len(e["ids"]) for e in examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    values = torch.zeros((B, T), dtype=torch.float32)
    slots = torch.zeros((B, T), dtype=torch.long)  # Slot.PAD == 0
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e["ids"])
        ids[b, :n] = torch.as_tensor(e["ids"])
        values[b, :n] = torch.as_tensor(e["values"], dtype=torch.float32)
        slots[b, :n] = torch.as_tensor(e["slots"])
        mask[b, :n] = True
    num_atoms = torch.tensor([e["num_atoms"] for e in examples], dtype=torch.long)
    return {"ids": ids, "values": values, "slots": slots, "mask": mask, "num_atoms": num_atoms}


def _as_prepared(paths, cache_dir: Path, config: PrepareConfig) -> list[Path]:
    """Prepared directories for ``paths``: prepared dirs pass through, CSV / CIF inputs are prepared (cached)."""
    out = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if (p / "meta.json").is_file():
            out.append(p)
            continue
        target = cache_dir / f"{p.parent.name}_{p.stem}"
        prepare([p], target, config)
        out.append(target)
    return out


class CrystalDataModule(L.LightningDataModule):
    """Train / val token streams from prepared directories or CSV / CIF inputs (prepared into ``cache_dir``)."""

    def __init__(self, train, val=None, batch_size: int = 64, num_workers: int = 0, prompt_fraction: float = 0.5,
                 seed: int = 0, cache_dir="prepared", prepare_config: PrepareConfig | None = None):
        super().__init__()
        self.train_inputs, self.val_inputs = train, val
        self.batch_size, self.num_workers = batch_size, num_workers
        self.prompt_fraction, self.seed = prompt_fraction, seed
        self.cache_dir = Path(cache_dir)
        self.prepare_config = prepare_config or PrepareConfig()
        self.train_set: CrystalDataset | None = None
        self.val_set: CrystalDataset | None = None

    def prepare_data(self) -> None:
        _as_prepared(self.train_inputs, self.cache_dir, self.prepare_config)
        if self.val_inputs is not None:
            _as_prepared(self.val_inputs, self.cache_dir, self.prepare_config)

    def setup(self, stage: str | None = None) -> None:
        train_dirs = _as_prepared(self.train_inputs, self.cache_dir, self.prepare_config)
        self.train_set = CrystalDataset(train_dirs, self.prompt_fraction, self.seed)
        if self.val_inputs is not None:
            val_dirs = _as_prepared(self.val_inputs, self.cache_dir, self.prepare_config)
            self.val_set = CrystalDataset(val_dirs, self.prompt_fraction, self.seed + 1)

    def _loader(self, dataset, shuffle: bool):
        from functools import partial

        from .tokenizer import PAD, CrystalTokenizer

        generator = torch.Generator().manual_seed(self.seed)
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=CrystalTokenizer().id(PAD)), generator=generator,
            persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        if self.val_set is None:
            if self.val_inputs is None:
                return []
            self.setup("validate")
        return self._loader(self.val_set, shuffle=False)
