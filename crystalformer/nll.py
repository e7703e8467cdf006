"""Negative log-likelihood of a model on prepared data sets, per data set and per slot.

Reads the token streams of prepared directories directly (no structure parsing, so it runs
where only torch, numpy and safetensors are installed) and returns nats per crystal for
p(X) and p(X | composition), with the breakdown by slot type.
"""

from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def dataset_nll(model, prepared, with_composition: bool = False, batch_size: int = 256) -> dict:
    """{"n", "nll", "nll_per_token", <slot>: nats per crystal} of ``model`` on one prepared directory."""
    from .datamodule import CrystalDataset, collate

    dataset = CrystalDataset([prepared], prompt_fraction=1.0 if with_composition else 0.0)
    tokenizer_vocab = list(dataset.parts[0].tokenizer.vocab)
    if tokenizer_vocab != list(model.tokenizer.vocab):
        raise ValueError(f"{prepared}: prepared with a different vocabulary than the model's tokenizer")
    was_training = model.training
    model.eval()
    n, total, tokens = 0, 0.0, 0.0
    slots: dict[str, float] = {}
    try:
        for start in range(0, len(dataset), batch_size):
            examples = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            batch = {k: v.to(model.device) for k, v in collate(examples, dataset.pad_id).items()}
            lp = model.log_prob_batch(batch)
            n += lp.total.numel()
            total += float(-lp.total.sum())
            tokens += float(lp.num_tokens.sum())
            for k, v in lp.by_slot.items():
                slots[k] = slots.get(k, 0.0) + float(-v.sum())
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError(f"{prepared}: no crystals")
    return {"n": n, "nll": total / n, "nll_per_token": total / tokens, **{k: v / n for k, v in slots.items()}}


def nll_table(model, prepared_dirs, batch_size: int = 256) -> dict[str, dict]:
    """``{name: {"p(X)": {...}, "p(X|composition)": {...}}}`` for each prepared directory (named by its folder)."""
    out = {}
    for path in prepared_dirs:
        path = Path(path)
        out[path.name] = {"p(X)": dataset_nll(model, path, False, batch_size),
                          "p(X|composition)": dataset_nll(model, path, True, batch_size)}
    return out
