"""Keep Lightning's advertisements and known, harmless warnings out of training logs.

What stays: progress bars, our own summaries, and every warning not listed here. What goes:
Lightning's "Tip" advertisements and warnings about its own internals or about choices this
package makes on purpose (``num_workers=0`` on CPU, a short epoch with a longer logging interval).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

# message patterns of warnings that say nothing the user can or should act on
KNOWN_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",          # Lightning internal deprecation (torch >= 2.10)
    r".*is smaller than the logging interval",       # tiny data: fine, the epoch is logged anyway
    r".*does not have many workers",                 # workers are off on purpose: the data is in memory
    r"Checkpoint directory .* exists and is not empty",  # a resumed run: checked before training starts
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.getMessage())


_FILTER = _DropTips()


@contextlib.contextmanager
def quiet_lightning():
    """Within the block: Lightning's tips are dropped and :data:`KNOWN_WARNINGS` ignored."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    handlers = {h for lg in loggers for h in lg.handlers}
    for lg in loggers:
        lg.addFilter(_FILTER)
    for h in handlers:
        h.addFilter(_FILTER)
    try:
        with warnings.catch_warnings():
            for pattern in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(_FILTER)
        for h in handlers:
            h.removeFilter(_FILTER)


def quietly(fn):
    """Decorator: run ``fn`` inside :func:`quiet_lightning`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with quiet_lightning():
            return fn(*args, **kwargs)

    return wrapper
