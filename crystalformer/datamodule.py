"""Batches of token streams from prepared directories: Dataset, sampler, collate, LightningDataModule.

Composition prompt (DESIGN section 4): one model serves both p(X) and p(X | composition)
when a random fraction of training examples carry their ``[COMP] .. [/COMP]`` prompt after
``[BOS]``. Which examples do is drawn for the whole data set at once from a
``torch.Generator`` seeded by (seed, epoch) (:func:`prompt_flags`), never from global state.
:class:`PromptSampler` draws the flags in the main process and hands ``(index, with_prompt)``
to the Dataset, so the batches are identical with any number of DataLoader workers and
change from epoch to epoch (Lightning calls ``set_epoch``; a plain loop advances it by one
per pass). Validation keeps the epoch-0 draw so that its loss is comparable across epochs.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch

from .data import (
    PrepareConfig,
    PreparedData,
    as_prepared,
    default_cache_dir,
    load_prepared,
)
from .model.batching import collate


def _seed(*keys: int) -> int:
    """A 63-bit torch seed mixed from integer keys (numpy SeedSequence: nearby keys give unrelated streams)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def prompt_flags(n: int, prompt_fraction: float, seed: int, epoch: int = 0) -> torch.Tensor:
    """(n,) bool: which examples carry the composition prompt in this epoch (Bernoulli(prompt_fraction) each)."""
    if prompt_fraction in (0.0, 1.0):
        return torch.full((n,), prompt_fraction == 1.0, dtype=torch.bool)
    generator = torch.Generator().manual_seed(_seed(seed, epoch, 0))
    return torch.rand(n, generator=generator) < prompt_fraction


class CrystalDataset(torch.utils.data.Dataset):
    """Token streams of one or more prepared directories (or :class:`PreparedData`), concatenated.

    ``dataset[i]`` uses the prompt flag of epoch 0 (or of :meth:`set_epoch`);
    ``dataset[(i, with_prompt)]`` (what :class:`PromptSampler` yields) decides it explicitly.
    """

    def __init__(self, prepared, prompt_fraction: float = 0.5, seed: int = 0, indices=None):
        if not 0.0 <= prompt_fraction <= 1.0:
            raise ValueError(f"prompt_fraction must be in [0, 1], got {prompt_fraction}")
        items = [prepared] if isinstance(prepared, (str, Path, PreparedData)) else list(prepared)
        if not items:
            raise ValueError("CrystalDataset needs at least one prepared directory")
        self.parts = [p if isinstance(p, PreparedData) else load_prepared(p) for p in items]
        vocabularies = {p.meta["vocab_size"] for p in self.parts}
        if len(vocabularies) > 1:
            raise ValueError(f"prepared directories use different vocabularies (sizes {sorted(vocabularies)})")
        sizes = [len(p) for p in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (parts + 1,)
        # a subset (e.g. a held-out validation split) keeps global indices; ``dataset[i]`` is its i-th
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices is not None and len(self.indices) and not (
                0 <= self.indices.min() and self.indices.max() < self.starts[-1]):
            raise IndexError(f"subset indices must lie in [0, {int(self.starts[-1])})")
        self.prompt_fraction = prompt_fraction
        self.seed = seed
        self.set_epoch(0)

    @property
    def pad_id(self) -> int:
        return self.parts[0].tokenizer.pad_id

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.flags = prompt_flags(len(self), self.prompt_fraction, self.seed, epoch)

    def __len__(self) -> int:
        return int(self.starts[-1]) if self.indices is None else len(self.indices)

    def stream_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(n,) token counts of every example without and with its composition prompt."""
        plain, prompted = [], []
        for part in self.parts:
            body = np.diff(part.tensors["offsets"])
            plain.append(body)
            prompted.append(body + np.diff(part.tensors["prompt_offsets"]))
        plain, prompted = np.concatenate(plain), np.concatenate(prompted)
        if self.indices is not None:
            plain, prompted = plain[self.indices], prompted[self.indices]
        return plain, prompted

    def locate(self, idx: int) -> tuple[PreparedData, int]:
        """The prepared part holding example ``idx`` and the index within it."""
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} crystals")
        if self.indices is not None:
            idx = int(self.indices[idx])
        part = int(np.searchsorted(self.starts, idx, side="right")) - 1
        return self.parts[part], idx - int(self.starts[part])

    def __getitem__(self, item) -> dict:
        idx, with_prompt = item if isinstance(item, tuple) else (item, bool(self.flags[item]))
        part, i = self.locate(int(idx))
        ids, values, slots = part.stream(i, with_prompt=bool(with_prompt))
        return {"ids": ids, "values": values, "slots": slots, "num_atoms": int(part.tensors["num_atoms"][i])}


class PromptSampler(torch.utils.data.Sampler):
    """Yields ``(index, with_prompt)``: indices shuffled (or in order) and prompt flags, both drawn per epoch.

    ``per_epoch=False`` keeps epoch 0's order and flags for ever (validation).
    """

    def __init__(self, dataset: CrystalDataset, shuffle: bool = True, seed: int = 0, per_epoch: bool = True):
        self.n, self.prompt_fraction = len(dataset), dataset.prompt_fraction
        self.shuffle, self.seed, self.per_epoch = shuffle, seed, per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if self.per_epoch:
            self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        flags = prompt_flags(self.n, self.prompt_fraction, self.seed, self.epoch).tolist()
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(_seed(self.seed, self.epoch, 1)))
            order = order.tolist()
        else:
            order = range(self.n)
        if self.per_epoch:
            self.epoch += 1  # the next pass draws afresh unless set_epoch says otherwise
        return iter([(i, flags[i]) for i in order])


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(index, with_prompt)`` whose streams have similar lengths (less padding).

    Each epoch: shuffle (seeded by seed and epoch), cut into pools of ``pool`` batches, sort each
    pool by stream length (with or without its prompt, as drawn), cut it into batches and shuffle
    the batch order. Every example appears exactly once per epoch, with the same prompt flags
    as :class:`PromptSampler` would give it.
    """

    def __init__(self, dataset: CrystalDataset, batch_size: int, seed: int = 0, pool: int = 50):
        if batch_size < 1 or pool < 1:
            raise ValueError(f"need batch_size >= 1 and pool >= 1, got {batch_size}, {pool}")
        self.n, self.prompt_fraction = len(dataset), dataset.prompt_fraction
        self.batch_size, self.seed, self.pool = batch_size, seed, pool
        self.plain, self.prompted = dataset.stream_lengths()  # (n,) each
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        flags = prompt_flags(self.n, self.prompt_fraction, self.seed, self.epoch).numpy()
        generator = torch.Generator().manual_seed(_seed(self.seed, self.epoch, 1))
        order = torch.randperm(self.n, generator=generator).numpy()
        lengths = np.where(flags, self.prompted, self.plain)
        batches = []
        size = self.batch_size * self.pool
        for start in range(0, self.n, size):
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        self.epoch += 1  # the next pass draws afresh unless set_epoch says otherwise
        for k in shuffle:  # a generator (see GlobalBatches)
            yield [(int(i), bool(flags[i])) for i in batches[k]]


class GlobalBatches(torch.utils.data.Sampler):
    """Batches of ``batch_size`` consecutive ``(index, with_prompt)`` pairs of a :class:`PromptSampler`."""

    def __init__(self, sampler: PromptSampler, batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        # a generator: DataLoader calls iter() more than once per pass but consumes only the last
        # one, and the epoch counter may advance only when a pass really starts
        pairs = list(self.sampler)
        for i in range(0, len(pairs), self.batch_size):
            yield pairs[i:i + self.batch_size]


class RankShard(torch.utils.data.Sampler):
    """This process's share of global batches: ``batch[rank::world_size]``.

    With data-parallel training every process draws the same global batches (same seeds) and
    takes every ``world_size``-th example, so W processes with batch B see exactly the batches
    of one process with batch W x B, and the averaged gradients are the same. ``pad``: a global
    batch with fewer than ``world_size`` examples is filled up cyclically, so every process
    has a batch at every step (training); without it (validation) a process may get fewer.
    """

    def __init__(self, batches, rank: int, world_size: int, pad: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.batches, self.rank, self.world_size, self.pad = batches, rank, world_size, pad

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            batch = list(batch)
            if self.pad and len(batch) < self.world_size:
                batch = (batch * self.world_size)[:self.world_size]
            share = batch[self.rank::self.world_size]
            if share:
                yield share


class CrystalDataModule(L.LightningDataModule):
    """Train / val batches from prepared directories, or from CSV / CIF inputs prepared into ``cache_dir``.

    ``train`` / ``val``: a path or a list of paths (prepared directories, CDVAE CSV files, CIF
    files or folders); several are concatenated. ``seed`` fixes shuffling and prompt draws.
    Without ``val``, ``val_fraction`` of the training crystals (a seeded draw) are held out
    for validation. Batches carry no grammar masks: the model computes them on its device
    (``model/masks.py``). ``bucket``: length-bucketed training batches (:class:`BucketBatchSampler`).
    Under data-parallel training every process takes its share of the same global batches
    (:class:`RankShard`).
    """

    def __init__(self, train, val=None, batch_size: int = 64, num_workers: int = 0, prompt_fraction: float = 0.5,
                 seed: int = 0, cache_dir=None, prepare_config: PrepareConfig | None = None,
                 val_fraction: float = 0.0, bucket: bool = False):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction, self.bucket = val_fraction, bucket
        if not 0.0 <= prompt_fraction <= 1.0:
            raise ValueError(f"prompt_fraction must be in [0, 1], got {prompt_fraction}")
        self.train_inputs, self.val_inputs = train, val
        self.batch_size, self.num_workers = batch_size, num_workers
        self.prompt_fraction, self.seed = prompt_fraction, seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.prepare_config = prepare_config or PrepareConfig()
        self.train_set: CrystalDataset | None = None
        self.val_set: CrystalDataset | None = None

    def prepare_data(self) -> None:
        """Runs on one process per node (Lightning): builds or reuses the caches."""
        announce = not getattr(self, "_announced", False)  # Lightning calls this again inside fit
        self._announced = True
        for inputs in (self.train_inputs, self.val_inputs):
            if inputs is not None:
                as_prepared(inputs, self.cache_dir, self.prepare_config, announce=announce)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            dirs = as_prepared(self.train_inputs, self.cache_dir, self.prepare_config, progress=False)
            self.train_set = CrystalDataset(dirs, self.prompt_fraction, self.seed)
            if self.val_inputs is None and self.val_fraction > 0:
                n = len(self.train_set)
                order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, 3))).numpy()
                n_val = max(1, int(round(self.val_fraction * n)))
                if n_val >= n:
                    raise ValueError(f"val_fraction {self.val_fraction} of {n} crystals leaves nothing to train on")
                self.train_set = CrystalDataset(dirs, self.prompt_fraction, self.seed, indices=np.sort(order[n_val:]))
                self.val_set = CrystalDataset(dirs, self.prompt_fraction, self.seed + 1, indices=np.sort(order[:n_val]))
        if self.val_set is None and self.val_inputs is not None:
            dirs = as_prepared(self.val_inputs, self.cache_dir, self.prepare_config, progress=False)
            self.val_set = CrystalDataset(dirs, self.prompt_fraction, self.seed + 1)

    def _loader(self, dataset: CrystalDataset, train: bool):
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        size = self.batch_size * world  # the global batch: batch_size per process
        if train and self.bucket:
            batches = BucketBatchSampler(dataset, size, seed=dataset.seed)
        else:
            batches = GlobalBatches(PromptSampler(dataset, shuffle=train, seed=dataset.seed, per_epoch=train), size)
        if world > 1:
            batches = RankShard(batches, rank, world, pad=train)
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=dataset.pad_id),
            generator=torch.Generator().manual_seed(_seed(self.seed, 2)),  # worker seeds: not the global RNG
            persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        self.setup("validate")
        return [] if self.val_set is None else self._loader(self.val_set, train=False)
