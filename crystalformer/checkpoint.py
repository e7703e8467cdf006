"""Safe loading of Lightning checkpoints for ``--resume``.

A Lightning checkpoint is a pickle. Unpickling a file from an untrusted run folder can execute
code, and torch before 2.6 (which the package allows) unpickles everything by default. Every
resume therefore first reads the checkpoint with ``torch.load(weights_only=True)``: tensors,
numbers, strings and plain containers only. A file that needs anything else is refused with
one line naming it, before Lightning opens it.
"""

from __future__ import annotations

import inspect
from pathlib import Path


class UnsafeCheckpointError(ValueError):
    """A checkpoint that cannot be read as plain weights (corrupt, or holding arbitrary objects)."""


def check_checkpoint(path: str | Path) -> None:
    """Raise :class:`UnsafeCheckpointError` unless ``path`` loads with ``weights_only=True``."""
    import pickle

    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"{path}: not a plain-weights checkpoint, refusing to load it ({first[:200]})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise UnsafeCheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")


def fit_kwargs(trainer, resume_from: str | Path | None) -> dict:
    """Keyword arguments for ``trainer.fit`` resuming from ``resume_from``, which the caller has
    passed through :func:`check_checkpoint` before any other work.

    Passes ``weights_only=True`` where the installed Lightning accepts it (2.5 and later).
    """
    if resume_from is None:
        return {"ckpt_path": None}
    kwargs: dict = {"ckpt_path": str(resume_from)}
    if "weights_only" in inspect.signature(trainer.fit).parameters:
        kwargs["weights_only"] = True
    return kwargs
