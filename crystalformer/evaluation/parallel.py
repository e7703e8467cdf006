"""Map a function over items in worker processes with a progress bar, order kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence

# What a third-party featurizer or matcher raises on a strange structure. Anything else is a bug and propagates.
STRUCTURE_ERRORS = (ValueError, TypeError, KeyError, IndexError, ArithmeticError, RuntimeError, AttributeError,
                    AssertionError)


def _executor(workers: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: no fork of a parent that may hold torch threads; spawn where it is missing
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def pmap(fn: Callable, items: Sequence, workers: int = 1, chunksize: int = 4, desc: str | None = None,
         progress: bool = True) -> list:
    """``[fn(x) for x in items]`` over ``workers`` processes (1: in this process), with a tqdm bar."""
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    out = []
    try:
        if workers == 1 or len(items) <= 1:
            for x in items:
                out.append(fn(x))
                bar.update()
            return out
        with _executor(workers) as ex:
            for r in ex.map(fn, items, chunksize=max(1, chunksize)):
                out.append(r)
                bar.update()
        return out
    finally:
        bar.close()
