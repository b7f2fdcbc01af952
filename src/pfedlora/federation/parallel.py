"""Process parallelism for the simulator: a round's clients trained, then evaluated, in forked
worker processes.

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
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from pfedlora.metrics import flops as flop_count

_TASK: Callable[[Any], Any] | None = None
_RESULT_DIR: str | None = None  # the round's folder on a memory file system for results, if there is one
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
    _keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the run at a round boundary
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def _keep_freed_memory() -> None:
    """Let a worker's allocator reuse freed memory instead of returning it to the kernel.

    Every training step allocates and frees the same large tensors (activations, gradients: ~10 MB a
    CNN-1 step). glibc serves blocks above its mmap threshold with fresh pages from the kernel, and
    trims its heap when the top is free, so steps fault those pages in and zero them again (34,500
    page faults in a round of Standalone's ten clients). Serving blocks up to 32 MB (glibc's maximum
    threshold) from a heap that is never trimmed keeps them mapped: CPU per round of the two workers
    7-10% lower (benchmarks/README.md), tree PSS within 10 MB, since a worker lives for one round and
    what it keeps goes back when it exits. In the run's own long-lived process the setting measured
    no faster and is not set. Numbers do not change (torch aligns every block the same way either
    way). Elsewhere than glibc this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        pass


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


def _run(item: Any) -> tuple[bytes | str, dict]:
    assert _TASK is not None
    known = flop_count.cached_keys()
    result = _TASK(item)
    # FLOP counts measured here go back to the parent so later rounds do not count them again
    counted = flop_count.counted_since(known)
    if _RESULT_DIR is not None:
        # a file in memory (tmpfs) that the parent maps instead of a copy through the pipe: a CNN-1
        # client's state is 10 MB, and pickling it through the pipe took 30-40 ms of the worker's time
        path = os.path.join(_RESULT_DIR, f"{os.getpid()}-{time.monotonic_ns()}.pt")
        torch.save(result, path)
        return path, counted
    buffer = io.BytesIO()
    torch.save(result, buffer)
    return buffer.getvalue(), counted


_MEMORY_ROOT = "/dev/shm"
_RESULT_PREFIX = "pfedlora-results-"
_swept = False


def _sweep_stale(root: str) -> None:
    """Remove result folders of processes that no longer exist (killed before their cleanup ran):
    they hold memory until removed. Once per process."""
    global _swept
    if _swept:
        return
    _swept = True
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(_RESULT_PREFIX):
            continue
        try:
            owner = int(name[len(_RESULT_PREFIX):].split("-", 1)[0])
            os.kill(owner, 0)
        except ValueError:
            continue  # not one of ours
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except OSError:
            continue  # alive under another user


def _memory_dir() -> str | None:
    """A new folder on a memory-backed file system (Linux ``/dev/shm``), or None where there is none."""
    root = _MEMORY_ROOT
    if not (sys.platform.startswith("linux") and os.path.isdir(root) and os.access(root, os.W_OK)):
        return None
    _sweep_stale(root)
    try:
        return tempfile.mkdtemp(prefix=f"{_RESULT_PREFIX}{os.getpid()}-", dir=root)
    except OSError:
        return None


def _receive(reply: bytes | str) -> Any:
    if isinstance(reply, str):
        # mapped, not read: the tensors' pages are the file's (the name is removed at once; the
        # pages stay while a tensor uses them)
        try:
            return torch.load(reply, mmap=True, weights_only=False)
        finally:
            os.unlink(reply)
    return torch.load(io.BytesIO(reply), weights_only=False)


class WorkerDied(RuntimeError):
    """A worker process ended without returning its result (killed by a signal, out of memory)."""


def map_forked(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(item) for item in items]`` computed by ``workers`` forked processes, in order.

    A worker that dies (e.g. SIGTERM sent to the whole process group, which workers do not
    ignore) raises :class:`WorkerDied` here instead of leaving the parent waiting for its result
    forever, as ``multiprocessing.Pool`` does.
    """
    global _TASK, _PARENT_PID, _RESULT_DIR
    if "fork" not in multiprocessing.get_all_start_methods():
        return [fn(item) for item in items]
    _TASK = fn
    _PARENT_PID = os.getpid()
    _RESULT_DIR = _memory_dir()
    results = []
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker)
    finished = False
    try:
        # each reply is unpacked as it arrives, so the parent never holds every serialised result at once
        for reply, counted in executor.map(_run, items, chunksize=1):
            flop_count.merge_counted(counted)
            results.append(_receive(reply))
            del reply
        finished = True
    except BrokenProcessPool as exc:
        raise WorkerDied("a worker process ended without returning its result (killed by a signal or out "
                         "of memory)") from exc
    finally:
        # every result is in: the workers' exit (unmapping a copy of this process's address space,
        # ~25 ms a round) overlaps with what the parent does next instead of being waited for
        executor.shutdown(wait=not finished, cancel_futures=not finished)
        _TASK = None
        if _RESULT_DIR is not None:
            shutil.rmtree(_RESULT_DIR, ignore_errors=True)  # results of a round that failed half-way
            _RESULT_DIR = None
    return results
