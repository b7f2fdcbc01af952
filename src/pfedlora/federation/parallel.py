"""Process parallelism for the simulator: a round's clients trained in forked worker processes.

Small CNNs on small batches use one CPU core poorly (per-op overhead dominates, intra-op threads
barely help), so one single-threaded process per core, each training whole clients, uses the
machine better. Workers are forked when a round starts: they inherit the datasets, modules and
client states copy-on-write, so nothing but the results travels. Every client's randomness derives
from (seed, round, client) and each worker runs with one thread, so the numbers do not depend on
which worker trains which client (same config, seed and ``engine.workers`` give the same metrics;
``workers: 1``, in-process with the default thread count, matches within float tolerance).
"""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from pfedlora.metrics import flops as flop_count

_TASK: Callable[[Any], Any] | None = None
_WORKER_LIMIT: int | None = None
_PARENT_PID: int | None = None  # the run's process, recorded before forking: workers must not outlive it
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0  # where prctl is unavailable: how often a worker checks that its parent lives


def limit_workers(limit: int | None) -> None:
    """Cap ``engine.workers`` in this process (None: no cap). Set by ``--jobs``: runs that share the
    cores must not each fork one worker per core. Results do not depend on the worker count."""
    global _WORKER_LIMIT
    _WORKER_LIMIT = limit


def worker_limit() -> int | None:
    return _WORKER_LIMIT


def _init_worker() -> None:
    torch.set_num_threads(1)
    flop_count.stop_disk_writes()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the run at a round boundary
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()


def _die_with_parent() -> None:
    """A worker ends when the run's process ends, however it ends (SIGKILL, the OOM killer): otherwise
    it waits forever on a pipe nobody reads, holding its memory. Linux: the kernel sends SIGKILL on
    the parent's death (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread polls the parent's pid."""
    parent = _PARENT_PID
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="pfedlora-parent-watch", daemon=True).start()


def _run(item: Any) -> tuple[bytes, dict]:
    assert _TASK is not None
    known = flop_count.cached_keys()
    result = _TASK(item)
    buffer = io.BytesIO()
    torch.save(result, buffer)
    # FLOP counts measured here go back to the parent so later rounds do not count them again
    return buffer.getvalue(), flop_count.counted_since(known)


class WorkerDied(RuntimeError):
    """A worker process ended without returning its result (killed by a signal, out of memory)."""


def map_forked(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(item) for item in items]`` computed by ``workers`` forked processes, in order.

    A worker that dies (e.g. SIGTERM sent to the whole process group, which workers do not
    ignore) raises :class:`WorkerDied` here instead of leaving the parent waiting for its result
    forever, as ``multiprocessing.Pool`` does.
    """
    global _TASK, _PARENT_PID
    if "fork" not in multiprocessing.get_all_start_methods():
        return [fn(item) for item in items]
    _TASK = fn
    _PARENT_PID = os.getpid()
    results = []
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_init_worker) as executor:
            # each reply is unpacked as it arrives, so the parent never holds every serialised result at once
            for payload, counted in executor.map(_run, items, chunksize=1):
                flop_count.merge_counted(counted)
                results.append(torch.load(io.BytesIO(payload), weights_only=False))
                del payload
    except BrokenProcessPool as exc:
        raise WorkerDied("a worker process ended without returning its result (killed by a signal or out "
                         "of memory)") from exc
    finally:
        _TASK = None
    return results
