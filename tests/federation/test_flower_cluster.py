"""Issue 30: a Flower test cluster never outlives the test run that started it.

A child process starts a cluster's SuperLink with the helper the Flower tests use
(tests/federation/flower_cluster.py) and is then ended by SIGTERM, as a CI job's timeout or a
scheduler ends a test run: no process of the cluster's group may survive it. Before, the groups
were killed only in the fixture's teardown, which a SIGTERM never reaches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flower_cluster import marked  # noqa: E402  (tests/federation/flower_cluster.py)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# the child: start a SuperLink, wait until it listens, print its process group, then wait forever
CHILD = """
import socket, sys, time
from pathlib import Path
from flower_cluster import Cluster, marked
cluster = Cluster(Path(sys.argv[1]), tls=False)
cluster.start_superlink()
deadline = time.monotonic() + 300
while True:
    try:
        socket.create_connection(("127.0.0.1", cluster.port), timeout=1).close()
        break
    except OSError:
        assert cluster.procs["superlink"].poll() is None, "the SuperLink exited"
        assert time.monotonic() < deadline, "the SuperLink did not listen"
        time.sleep(0.2)
deadline = time.monotonic() + 60  # the SuperLink starts its SuperExec (in a session of its own)
while len(marked(sys.argv[1])) < 2 and time.monotonic() < deadline:
    time.sleep(0.2)
print(*cluster.groups(), flush=True)
while True:
    time.sleep(3600)
"""


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_no_cluster_process_survives_a_signal_to_the_test_process(tmp_path, signum):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), str(REPO / "src"),
                                                                    os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cluster")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             # as in a terminal: SIGINT not inherited as ignored from a background shell
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    groups: list[int] = []
    try:
        line = child.stdout.readline()
        assert line.strip(), f"the child printed no process group: {child.communicate(timeout=60)}"
        groups = [int(g) for g in line.split()]
        root = str(tmp_path / "cluster")
        assert groups and all(_group_members(g) for g in groups)  # the SuperLink runs
        started = marked(root)  # the SuperLink and its SuperExec (its own session)
        assert len(started) >= 2, started
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=120)
        # the handler re-raised: the child ends by the signal (SIGINT: by an uncaught KeyboardInterrupt,
        # after which Python ends itself with SIGINT)
        assert child.returncode == -signum, stderr
        deadline = time.monotonic() + 60  # a killed process may take a moment to be reaped
        while (any(_group_members(g) for g in groups) or marked(root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not marked(root), f"cluster processes survived (of {started})"
        # /proc, not os.killpg(pgid, 0): a killed process orphaned to an init that does not reap
        # (a container's) stays a zombie in its group, ended but still signalable
        assert not [_group_members(g) for g in groups if _group_members(g)], "cluster processes survived"
    finally:
        for pid in marked(str(tmp_path / "cluster")):
            os.kill(pid, signal.SIGKILL)
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
