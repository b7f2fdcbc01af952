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


def _faults_of_training_steps(_: int) -> int:
    import resource

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(800, 2000), torch.nn.ReLU(), torch.nn.Linear(2000, 500))
    x = torch.randn(64, 800)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(30):  # activations and gradients allocated and freed every step (~12 MB)
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_worker_reuses_freed_memory_instead_of_faulting_it_in_again(memory_root, monkeypatch):
    (kept,) = parallel.map_forked(_faults_of_training_steps, [0], 2)
    monkeypatch.setattr(parallel, "_keep_freed_memory", lambda: None)  # glibc's defaults
    (returned,) = parallel.map_forked(_faults_of_training_steps, [0], 2)
    assert kept < 0.5 * returned
