"""Relaxations in worker processes, results in input order (``--relax-workers N``).

A relaxation is one structure at a time (ASE's FIRE over the potential's forces; CHGNet's
batched forces and stress are no faster per structure on a CPU: 0.09 s one at a time against
0.19 s in batches of 32, measured here), so many of them are spread over processes: each worker
loads the potential once, runs torch with one thread, and relaxes what it is handed. Results
come back in the order the structures were given, so a caller can write each one as it arrives
or stop early (closing the iterator cancels what has not started). An interrupt (Ctrl-C, or
SIGTERM, which the command line turns into ``SystemExit``) ends the worker processes at once,
relaxations under way included, instead of waiting for them to finish.

Workers are started with ``spawn`` (a forked copy of a process that has run torch's thread pool
can hang); a new pool is checked with a trivial task first, so workers that cannot start at all
raise one clear error instead of failing every structure. When a worker dies (killed, out of
memory, a crash inside the potential), Python's pool ends every worker, so the structures then
in hand become suspects: results already finished are kept, and each suspect is tried again on
a fresh pool *alone*, so a crash now names the structure that caused it. That structure comes
back unrelaxed with the reason (its error starts with :data:`WORKER_ERROR`); the others are
relaxed as usual. After ``MAX_RESTARTS`` fresh pools the ones left fail with the reason too.
Nothing is dropped.

The number of workers is the potential's ``workers`` (``load_potential(name, workers=N)``,
``--relax-workers N`` on the command line), so every caller that relaxes through
:func:`relax_many` gets the pool without another argument. Only potentials that can be rebuilt
by name in a worker (the entries of :data:`~.potential.POTENTIALS`) run in parallel; any other
object runs in this process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from .relax import RelaxConfig, RelaxResult, relax_one

MAX_RESTARTS = 8  # fresh pools after worker deaths, per call
WINDOW = 16  # structures queued per worker: results may run this far ahead of the caller
WORKER_ERROR = "worker process died"  # how the errors of structures lost with a worker begin
_WORKER_POTENTIAL = None  # the potential of a worker process, loaded by _start_worker


def _start_worker(name: str, device: str) -> None:
    import torch

    from .potential import load_potential

    global _WORKER_POTENTIAL
    torch.set_num_threads(1)
    _WORKER_POTENTIAL = load_potential(name, device=device)
    _ = _WORKER_POTENTIAL.model if hasattr(_WORKER_POTENTIAL, "model") else None  # load the weights now


def _ping() -> bool:
    return _WORKER_POTENTIAL is not None


def _relax_in_worker(structure, config: RelaxConfig) -> RelaxResult:
    return relax_one(structure, _WORKER_POTENTIAL, config)


def respawnable(potential) -> bool:
    """Whether ``potential`` can be rebuilt by name in a worker process."""
    from .potential import POTENTIALS

    return type(potential) in POTENTIALS.values() and isinstance(getattr(potential, "device", None), str)


def _lost(structure, reason: str) -> RelaxResult:
    return RelaxResult(structure, math.nan, math.nan, 0, False, False, f"{WORKER_ERROR}: {reason}")


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


def _terminate(potential, pool) -> None:
    """End ``pool``'s worker processes now, relaxations under way included (after an interrupt)."""
    if getattr(potential, "_pool", None) is pool:
        potential._pool = None
    processes = list((getattr(pool, "_processes", None) or {}).values())  # CPython's executor keeps them there
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():  # SIGTERM not honoured in time: SIGKILL cannot be
            process.kill()
            process.join(timeout=5)


def _pool(potential):
    """The potential's worker pool, started (and checked with a trivial task) when there is none."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if getattr(potential, "_pool", None) is None:
        pool = ProcessPoolExecutor(max_workers=potential.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(potential.name, potential.device))
        try:
            pool.submit(_ping).result()
        except BrokenProcessPool as err:
            pool.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(f"relaxation worker processes could not start the {potential.name} potential "
                               f"({err}); run with one worker (--relax-workers 1) to see why") from None
        potential._pool = pool
    return potential._pool


def _pooled(structures: list, potential, config: RelaxConfig, workers: int) -> Iterator[RelaxResult]:
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    n = len(structures)
    todo = list(range(n))  # indices not yet handed to a worker, ascending
    inflight: dict = {}  # index -> future
    ready: dict = {}  # index -> result, until its turn comes
    suspects: set = set()  # in hand when a worker died: tried again one at a time
    restarts, nxt = 0, 0
    pool = _pool(potential)
    try:
        while nxt < n:
            if nxt in ready:
                yield ready.pop(nxt)
                nxt += 1
                continue
            broken = None
            while todo and len(inflight) < WINDOW * workers:
                i = todo[0]
                if inflight and (i in suspects or any(j in suspects for j in inflight)):
                    break  # a suspect runs alone
                try:
                    inflight[i] = pool.submit(_relax_in_worker, structures[i], config)
                except BrokenProcessPool as err:
                    broken = err
                    break
                todo.pop(0)
            if broken is None:
                wait(list(inflight.values()), return_when=FIRST_COMPLETED)
                for i, f in list(inflight.items()):
                    if not f.done():
                        continue
                    try:
                        ready[i] = f.result()
                    except BrokenProcessPool as err:
                        broken = err
                        break
                    except Exception as err:  # noqa: BLE001 - e.g. a structure that cannot be sent: its own failure
                        ready[i] = _lost(structures[i], f"{type(err).__name__}: {str(err)[:200]}")
                    del inflight[i]
                if broken is None:
                    continue
            # the pool is gone: finished results are kept, the rest are suspects
            unfinished = []
            for i, f in sorted(inflight.items()):
                if f.done() and not f.cancelled() and f.exception() is None:
                    ready[i] = f.result()
                else:
                    unfinished.append(i)
            inflight.clear()
            if len(unfinished) == 1 and unfinished[0] in suspects:  # it ran alone: it is the cause
                ready[unfinished[0]] = _lost(structures[unfinished[0]], f"the worker relaxing it ended ({broken})")
            else:
                suspects.update(unfinished)
                todo = sorted(set(todo) | set(unfinished))
            if potential._pool is pool:
                potential._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            restarts += 1
            if restarts > MAX_RESTARTS:
                for i in todo:
                    ready[i] = _lost(structures[i], f"not relaxed: worker processes died {restarts} times")
                todo = []
            else:
                pool = _pool(potential)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM: do not wait for the relaxations under way
        _terminate(potential, pool)
        raise
    finally:
        for f in inflight.values():  # the caller stopped early: what has not started is not needed
            f.cancel()
