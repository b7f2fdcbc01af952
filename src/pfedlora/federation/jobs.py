"""Independent runs at once: the runs of a ``compare`` or ``sweep`` on local processes or on Ray.

A comparison of 8 algorithms x 3 seeds is 24 independent runs. ``--jobs 1`` runs them one after
another in this process; ``--jobs N`` runs N at a time, each in its own process with one torch
thread; ``--executor ray`` submits each run as a Ray task (one CPU each) to a local or existing Ray
cluster. A run's numbers never depend on which of these ran it: every run trains at
``engine.threads`` (default 1) torch threads, and the engine's forked workers (one thread each) give
the same numbers as training in-process (see :mod:`pfedlora.federation.parallel`), so capping
``engine.workers`` while jobs share the cores changes only the speed.

The runtimes below see configs and run directories only; they never name an algorithm.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfedlora.config import Config
from pfedlora.errors import UserError


@dataclass(frozen=True)
class RunJob:
    """One run to execute: its config, its directory and a label for progress lines."""

    config: Config
    run_dir: Path
    label: str


# (job index, round, rounds, metrics row or {}) for every evaluated round; (index, -1, rounds, {}) when done
ProgressEvent = tuple[int, int, int, dict]


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``; ``?`` for NaN (not known yet)."""
    if seconds != seconds:  # NaN: not known yet
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_jobs(text: str | int) -> int:
    """``--jobs``: a positive integer or ``auto`` (one job per core)."""
    if isinstance(text, int) or str(text).strip().isdigit():
        value = int(text)
        if value >= 1:
            return value
    elif str(text).strip() == "auto":
        return available_cores()
    raise UserError(f"--jobs expects a positive integer or 'auto' (one job per core), got {text!r}")


def run_job(job: RunJob, progress: Callable[[int, int, dict], None] | None = None) -> None:
    """Run (or continue) one job in this process."""
    from pfedlora.federation.simulation import run_or_resume

    run_or_resume(job.config, job.run_dir, progress=progress, log=lambda _: None)


# --------------------------------------------------------------------------- local processes

_EVENTS: Any = None  # the child's end of the progress queue


def _init_child(events: Any, engine_workers: int) -> None:
    import torch

    from pfedlora.federation import parallel

    global _EVENTS
    _EVENTS = events
    torch.set_num_threads(1)
    parallel.limit_workers(engine_workers)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the jobs


def _child(index: int, job: RunJob) -> int:
    def report(round_index: int, rounds: int, row: dict) -> None:
        if row:
            _EVENTS.put((index, round_index, rounds, {k: row[k] for k in ("mean_acc", "wall_s") if k in row}))

    run_job(job, report)
    _EVENTS.put((index, -1, job.config.rounds, {}))
    return index


def run_local(jobs: Sequence[RunJob], workers: int, on_event: Callable[[ProgressEvent], None]) -> None:
    """Run ``jobs`` on ``workers`` processes; ``on_event`` gets every progress event in this thread.

    Each process trains with one torch thread and at most ``cores // workers`` engine workers, so
    the machine is used once, not oversubscribed. The first failing job stops the others.
    """
    if not jobs:
        return
    # spawned, not forked: a run may use several torch threads (engine.threads), and OpenMP is not
    # safe to use in a child forked from a parent that already used it (it can deadlock)
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    engine_workers = max(1, available_cores() // workers)
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_child,
                               initargs=(events, engine_workers))
    futures = [pool.submit(_child, index, job) for index, job in enumerate(jobs)]
    try:
        pending = set(futures)
        while pending:
            _drain(events, on_event, timeout=0.2)
            done, pending = wait(pending, timeout=0, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # re-raises a job's exception here
        _drain(events, on_event, timeout=0)
    except BrokenProcessPool as exc:
        _stop(pool)
        raise UserError("a run's process ended without finishing (killed by a signal or out of memory); "
                        "finished runs are kept, run the command again to continue") from exc
    except KeyboardInterrupt:
        _interrupt(pool, futures, lambda: _drain(events, on_event, timeout=0.2))
        raise
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()


def _drain(events: Any, on_event: Callable[[ProgressEvent], None], timeout: float) -> None:
    try:
        event = events.get(timeout=timeout) if timeout else events.get_nowait()
        while True:
            on_event(event)
            event = events.get_nowait()
    except queue.Empty:
        pass


def _interrupt(pool: ProcessPoolExecutor, futures: Sequence[Any], drain: Callable[[], None],
               grace: float | None = None) -> None:
    """Ctrl-C in the driver (the children ignore SIGINT, so the terminal's Ctrl-C to the whole process
    group stops the runs once, from here): cancel the queued runs, ask each running one with SIGTERM to
    stop at its round boundary and write its checkpoint, and wait for that. A second Ctrl-C (or
    ``grace`` seconds) kills them instead; they then resume from their last periodic checkpoint."""
    processes = [p for p in getattr(pool, "_processes", {}).values() if p.is_alive()]
    sys.stderr.write(f"\ninterrupted: {len(processes)} running run(s) stop after their current round and write a "
                     "checkpoint (Ctrl-C again to kill them); run the same command again to continue\n")
    sys.stderr.flush()
    running = [f for f in futures if not f.cancel()]  # cancels the queued ones
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    try:  # a run is stopped once its future holds RunInterrupted (its checkpoint is written by then);
        # the children's progress events are drained meanwhile: a child blocks until its queue is flushed
        deadline = None if grace is None else time.monotonic() + grace
        while not all(f.done() for f in running) and any(p.is_alive() for p in processes) \
                and (deadline is None or time.monotonic() < deadline):
            drain()
        end = time.monotonic() + 5  # then the idle workers exit on the pool's shutdown, or are killed
        pool.shutdown(wait=False, cancel_futures=True)
        while any(p.is_alive() for p in processes) and time.monotonic() < end:
            drain()
    except KeyboardInterrupt:
        pass
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout=10)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel queued jobs and end running ones (they resume from their checkpoints next time)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


# --------------------------------------------------------------------------- Ray

def _ray_task(config_dict: dict, run_dir: str, driver_cwd: str, shared_fs: bool,
              files: dict[str, bytes] | None = None) -> tuple[dict[str, bytes], BaseException | None] | None:
    """A Ray task: one run. With a shared filesystem it writes ``run_dir`` itself. Otherwise it runs
    in a temporary directory, seeded with ``files`` (an unfinished run's directory the driver sent:
    the run resumes from its checkpoint), and returns the run directory's files, checkpoint included,
    with the exception that stopped the run (None when it finished): a failed or interrupted run's
    checkpoint comes back to the driver too."""
    import torch

    from pfedlora.config import build_config

    torch.set_num_threads(1)
    if os.path.isdir(driver_cwd):  # relative dataset paths mean what they meant to the driver
        os.chdir(driver_cwd)
    config = build_config(config_dict)
    if shared_fs:
        run_job(RunJob(config, Path(run_dir), ""))
        return None
    with tempfile.TemporaryDirectory(prefix="pfedlora-ray-") as scratch:
        out = Path(scratch) / "run"
        if files:
            _write_files(out, files)
        error: BaseException | None = None
        try:
            run_job(RunJob(config, out, ""))
        except BaseException as exc:  # noqa: BLE001 - shipped back with the checkpoint, raised by the driver
            error = _portable(exc, run_dir)
        return _read_files(out), error


def _portable(exc: BaseException, run_dir: str) -> BaseException:
    """``exc`` as the driver can unpickle and report it (the run directory named as the driver's)."""
    import pickle

    from pfedlora.errors import RunInterrupted

    if isinstance(exc, RunInterrupted):
        return UserError(f"interrupted after round {exc.round_index}; its checkpoint is in {run_dir}: "
                         "run the same command again to continue")
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - an exception whose class cannot be rebuilt from its args
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _read_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory, by its path relative to it."""
    if not run_dir.is_dir():
        return {}
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}


def _unfinished_files(run_dir: Path) -> dict[str, bytes] | None:
    """The files of an unfinished run with a checkpoint (config.yaml, checkpoint.pt, metrics.csv,
    events.log, ...), to send with its task so it resumes there; None when there is nothing to resume."""
    from pfedlora.federation.checkpoint import CHECKPOINT_NAME

    if (run_dir / CHECKPOINT_NAME).is_file() and not (run_dir / "summary.json").is_file():
        return _read_files(run_dir)
    return None


def run_ray(jobs: Sequence[RunJob], on_event: Callable[[ProgressEvent], None], *, address: str | None = None,
            shared_fs: bool = False, num_cpus: int | None = None) -> None:
    """Submit ``jobs`` as Ray tasks (one CPU each) to the cluster at ``address`` (None: start a local
    Ray instance with ``num_cpus`` CPUs, all cores by default)."""
    if not jobs:
        return
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'pfedlora[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus or available_cores(), include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"--ray-address {address!r}: cannot connect to a Ray cluster ({str(exc).splitlines()[0]}); "
                            "give the head node's address, e.g. ray://HOST:10001 or HOST:6379") from None
    if not shared_fs:  # each task's run directory travels with it, to the node and back
        sys.stderr.write("ray without --ray-shared-fs: each run's directory travels with its task; a run that fails "
                         "or is interrupted resumes from the checkpoint its task returned, but one whose task is "
                         "killed outright (a lost node, Ctrl-C) resumes from the last checkpoint returned before "
                         "(round 1 if none)\n")
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    cwd = os.getcwd()
    refs = {}
    for index, job in enumerate(jobs):
        files = None if shared_fs else _unfinished_files(Path(job.run_dir))
        refs[remote.remote(job.config.to_dict(), str(Path(job.run_dir).resolve()), cwd, shared_fs, files)] = index
    try:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            index = refs[done[0]]
            returned = ray.get(done[0])
            if returned is not None:
                files, error = returned
                if files:
                    _write_files(jobs[index].run_dir, files)
                if error is not None:
                    raise error
            on_event((index, -1, jobs[index].config.rounds, {}))
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()


def _write_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """The run directory a Ray task returned, written here (replacing an unfinished one)."""
    staging = run_dir.with_name(run_dir.name + ".incoming")
    shutil.rmtree(staging, ignore_errors=True)
    for name, data in files.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    staging.rename(run_dir)


# --------------------------------------------------------------------------- progress

class JobsProgress:
    """One display for many runs: runs done, the current round of each running one, and an ETA
    from the rounds finished so far. On a terminal a single status line redrawn in place;
    otherwise (a log) one line per evaluated round."""

    def __init__(self, jobs: Sequence[RunJob], stream: Any = None) -> None:
        self.jobs = list(jobs)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.current: dict[int, int] = {}
        self.done: set[int] = set()
        self.total_rounds = sum(job.config.rounds for job in self.jobs)
        self._lock = threading.Lock()

    def rounds_done(self) -> int:
        return sum(self.jobs[i].config.rounds for i in self.done) + sum(
            r for i, r in self.current.items() if i not in self.done)

    def eta(self) -> float:
        finished = self.rounds_done()
        elapsed = time.perf_counter() - self.started
        return elapsed / finished * (self.total_rounds - finished) if finished else float("nan")

    def __call__(self, event: ProgressEvent) -> None:
        index, round_index, rounds, row = event
        with self._lock:
            if round_index < 0:
                self.done.add(index)
                self.current.pop(index, None)
                text = f"{self.jobs[index].label}: finished"
            else:
                self.current[index] = round_index
                acc = row.get("mean_acc")
                shown = f"{acc:.2f}%" if isinstance(acc, (int, float)) and acc == acc else "n/a"
                text = f"{self.jobs[index].label}: round {round_index}/{rounds} acc {shown}"
            running = ", ".join(f"{self.jobs[i].label} r{r}/{self.jobs[i].config.rounds}"
                                for i, r in sorted(self.current.items()))
            status = (f"runs {len(self.done)}/{len(self.jobs)} done"
                      + (f" | running: {running}" if running else "")
                      + f" | elapsed {format_duration(time.perf_counter() - self.started)} ETA {format_duration(self.eta())}")
            if self.tty:
                width = shutil.get_terminal_size((120, 20)).columns - 1
                self.stream.write("\r" + status[:width].ljust(width))
                if round_index < 0:
                    self.stream.write("\r" + text.ljust(width)[:width] + "\n")
            else:
                self.stream.write(f"{text} | {status}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def execute(jobs: Sequence[RunJob], *, workers: int = 1, executor: str = "local", ray_address: str | None = None,
            ray_shared_fs: bool = False, serial: Callable[[RunJob], None] | None = None,
            on_event: Callable[[ProgressEvent], None] | None = None) -> None:
    """Run every job: serially in this process (``workers`` 1, local; ``serial`` runs one job), on
    ``workers`` local processes, or as Ray tasks."""
    if executor not in ("local", "ray"):
        raise UserError(f"--executor must be local or ray, got {executor!r}")
    if executor == "local" and workers == 1:
        for job in jobs:
            (serial or run_job)(job)
        return
    display = on_event or JobsProgress(jobs)
    try:
        if executor == "ray":
            run_ray(jobs, display, address=ray_address, shared_fs=ray_shared_fs,
                    num_cpus=None if ray_address else (workers if workers > 1 else None))
        else:
            run_local(jobs, workers, display)
    finally:
        if isinstance(display, JobsProgress):
            display.close()
