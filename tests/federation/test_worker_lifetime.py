"""Issue 30: forked workers never outlive their run, however the run's process ends (SIGKILL included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# a run's round as the pool sees it: 2 workers, each busy with a client that takes minutes
BUSY_ROUND = """
import os, sys, time
from pfedlora.federation.parallel import map_forked
out = sys.argv[1]
def train_client(client_id):
    open(os.path.join(out, f"worker-{os.getpid()}"), "w").close()
    time.sleep(600)
map_forked(train_client, [0, 1], 2)
"""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("attempt", range(3))
def test_no_worker_survives_a_sigkill_of_its_run_mid_round(tmp_path, attempt):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen([sys.executable, "-c", BUSY_ROUND, str(tmp_path)], env=env)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert parent.poll() is None, "the run ended before its workers started"
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.2)
            workers = [int(p.name.removeprefix("worker-")) for p in tmp_path.glob("worker-*")]
        assert all(_alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in workers if _alive(pid)] == [], "workers outlived their run"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
