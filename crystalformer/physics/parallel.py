"""Relaxations in worker processes, results in input order (``--workers N``).

A relaxation is one structure at a time (ASE's FIRE over the potential's forces; CHGNet's
batched forces and stress are no faster per structure on a CPU: 0.09 s one at a time against
0.19 s in batches of 32, measured here), so many of them are spread over processes: each worker loads the potential once, runs torch with one thread, and relaxes
what it is handed. Results come back in the order the structures were given, at most
``2 x workers`` ahead of the caller, so a caller can write each one as it arrives or stop early.

Workers are started with ``spawn`` (a forked copy of a process that has run torch's thread pool
can hang). A worker that dies (killed, out of memory, a crash inside the potential) costs only
the relaxations it had in hand: they come back unrelaxed with the reason, and a fresh pool takes
the rest (at most ``MAX_RESTARTS`` times; after that the remaining ones fail with the reason
too). Nothing is dropped.

The number of workers is the potential's ``workers`` (``load_potential(name, workers=N)``,
``--workers N`` on the command line), so every caller that relaxes through :func:`relax_many`
gets the pool without another argument. Only potentials that can be rebuilt by name in a worker (the entries of
:data:`~.potential.POTENTIALS`) run in parallel; any other object runs in this process.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator

from .relax import RelaxConfig, RelaxResult, relax_one

MAX_RESTARTS = 3
_WORKER_POTENTIAL = None  # the potential of a worker process, loaded by _start_worker


def _start_worker(name: str, device: str) -> None:
    import torch

    from .potential import load_potential

    global _WORKER_POTENTIAL
    torch.set_num_threads(1)
    _WORKER_POTENTIAL = load_potential(name, device=device)
    _ = _WORKER_POTENTIAL.model if hasattr(_WORKER_POTENTIAL, "model") else None  # load the weights now


def _relax_in_worker(structure, config: RelaxConfig) -> RelaxResult:
    return relax_one(structure, _WORKER_POTENTIAL, config)


def respawnable(potential) -> bool:
    """Whether ``potential`` can be rebuilt by name in a worker process."""
    from .potential import POTENTIALS

    return type(potential) in POTENTIALS.values() and isinstance(getattr(potential, "device", None), str)


def _lost(structure, reason: str) -> RelaxResult:
    return RelaxResult(structure, math.nan, math.nan, 0, False, False, f"relaxation: {reason}")


def _finished(structure, future) -> RelaxResult | None:
    """The result of a future that completed before its pool broke, else None."""
    if future is None or not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result()


def relax_many(structures: Iterable, potential, config: RelaxConfig | None = None) -> Iterator[RelaxResult]:
    """:func:`~.relax.relax_one` of each structure, in order, over ``potential.workers`` processes.

    One worker (the default), a single structure, or a potential that is not
    :func:`respawnable` run here, one after another: the same results, since the pool only
    changes where they are computed. The pool is kept on the potential for its next call and
    ends with :func:`close_pool` (or when the program exits).
    """
    config = config if config is not None else RelaxConfig()
    workers = getattr(potential, "workers", 1)
    structures = list(structures)
    if workers <= 1 or len(structures) <= 1 or not respawnable(potential):
        for s in structures:
            yield relax_one(s, potential, config)
        return
    yield from _pooled(structures, potential, config, workers)


def close_pool(potential) -> None:
    """Stop the worker processes of ``potential`` (a later :func:`relax_many` starts new ones)."""
    pool = getattr(potential, "_pool", None)
    if pool is not None:
        potential._pool = None
        pool.shutdown(wait=True, cancel_futures=True)


def _pool(potential):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if getattr(potential, "_pool", None) is None:
        potential._pool = ProcessPoolExecutor(max_workers=potential.workers,
                                              mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_start_worker, initargs=(potential.name, potential.device))
    return potential._pool


def _pooled(structures: list, potential, config: RelaxConfig, workers: int) -> Iterator[RelaxResult]:
    from concurrent.futures.process import BrokenProcessPool

    restarts = 0
    pending: deque = deque()  # (structure, future), in input order
    todo = deque(structures)
    try:
        while todo or pending:
            while todo and len(pending) < 2 * workers:
                s = todo.popleft()
                try:
                    pending.append((s, _pool(potential).submit(_relax_in_worker, s, config)))
                except BrokenProcessPool:
                    pending.append((s, None))
            s, future = pending.popleft()
            try:
                if future is None:
                    raise BrokenProcessPool("the worker pool had stopped")
                yield future.result()
                continue
            except BrokenProcessPool as err:
                result = _lost(s, f"worker process died ({err})")
            # the pool is gone: what it finished is kept, what it held fails with the reason,
            # and a fresh pool takes the rest
            lost = [result] + [_finished(t, f) or _lost(t, "worker process died while this structure was in hand")
                               for t, f in pending]
            pending.clear()
            pool, potential._pool = potential._pool, None
            pool.shutdown(wait=False, cancel_futures=True)
            restarts += 1
            if restarts > MAX_RESTARTS:
                lost += [_lost(t, f"worker processes died {restarts} times; not tried") for t in todo]
                todo.clear()
            yield from lost
    finally:
        for _, future in pending:  # the caller stopped early: what was queued is not needed
            if future is not None:
                future.cancel()
