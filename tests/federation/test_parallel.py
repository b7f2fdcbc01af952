"""map_forked: results come back through a memory file system (or the pipe where there is none) with
the same values, nothing is left behind, and folders of killed runs are swept."""

import os
import subprocess
import sys

import pytest
import torch

from pfedlora.federation import parallel

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /dev/shm are Linux's")


def _result(k: int) -> dict:
    return {"state": torch.full((1000, 100), float(k)), "k": k}


@pytest.fixture()
def memory_root(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "_MEMORY_ROOT", str(tmp_path))
    monkeypatch.setattr(parallel, "_swept", False)
    return tmp_path


def test_results_through_memory_files_equal_the_pipe_and_leave_nothing(memory_root, monkeypatch):
    mapped = parallel.map_forked(_result, range(5), 2)
    assert [r["k"] for r in mapped] == list(range(5))
    assert all(torch.equal(r["state"], torch.full((1000, 100), float(r["k"]))) for r in mapped)
    assert list(memory_root.iterdir()) == []  # files removed on receipt, the folder after the round
    monkeypatch.setattr(parallel, "_MEMORY_ROOT", str(memory_root / "absent"))
    piped = parallel.map_forked(_result, range(5), 2)
    assert all(torch.equal(a["state"], b["state"]) for a, b in zip(mapped, piped))
    mapped[0]["state"].add_(1)  # a received state is the parent's own to change (copy on write)
    assert mapped[0]["state"][0, 0] == 1


def test_folders_of_dead_runs_are_swept_once(memory_root):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = memory_root / f"pfedlora-results-{dead}-abc"
    alive = memory_root / f"pfedlora-results-{os.getpid()}-def"
    other = memory_root / "someone-else"
    for folder in (stale, alive, other):
        folder.mkdir()
    (stale / "left.pt").write_bytes(b"x" * 100)
    parallel.map_forked(_result, range(2), 2)
    assert not stale.exists() and alive.exists() and other.exists()


_MALLOPT_CALLS: list[tuple[int, int]] = []


class _RecordingLibc:
    def mallopt(self, param: int, value: int) -> int:
        _MALLOPT_CALLS.append((param, value))
        return 1

    def prctl(self, *args: int) -> int:
        return -1  # the parent-watch thread instead


def _mallopt_calls(_: int) -> list[tuple[int, int]]:
    return list(_MALLOPT_CALLS)


def test_a_worker_keeps_freed_memory(memory_root, monkeypatch):
    # the page-fault and CPU effect is measured by benchmarks/per_round.py (benchmarks/README.md);
    # here: every worker sets glibc's mmap threshold to its 32 MB maximum and turns heap trimming off
    monkeypatch.setattr(parallel.ctypes, "CDLL", lambda *args, **kwargs: _RecordingLibc())
    (calls,) = parallel.map_forked(_mallopt_calls, [0], 2)
    assert calls == [(parallel._M_MMAP_THRESHOLD, 32 * 1024 * 1024), (parallel._M_TRIM_THRESHOLD, 2**31 - 1)]
