"""A real Flower cluster for tests (a SuperLink and SuperNodes on 127.0.0.1) that never outlives
the process that started it.

Every process starts in its own session (its own process group, which its children join) and
carries a marker in its environment (for children that start a session of their own, as the
SuperLink's SuperExec does); every group and marked process started here is killed however this
process ends: ``Cluster.close`` (the fixture's teardown), ``atexit``, and SIGTERM/SIGINT handlers that kill
the groups and then re-raise the signal (a test run ended by SIGTERM used to orphan SuperNodes and
SuperExecs). Only SIGKILL of this process escapes, as it escapes everything.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODELS = ["cnn5", "cnn4", "cnn3"]  # partition k's architecture, given by its SuperNode's node config
RUN = {
    "num_clients": 3, "rounds": 2, "model_pool": "cnn3,cnn4,cnn5", "partition.kind": "dirichlet",
    "train.batch_size": 32, "eval_every": 2,
}

_GROUPS: set[int] = set()  # process groups started here and not yet killed
_MARKERS: set[str] = set()  # PFEDLORA_TEST_CLUSTER values of the clusters started here
MARKER = "PFEDLORA_TEST_CLUSTER"  # in every cluster process's environment, inherited by its children


def marked(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker``: also those that left the group (the
    SuperLink starts its SuperExec in a session of its own) or were orphaned. Linux (/proc) only."""
    needle = b"\0" + f"{MARKER}={marker}".encode() + b"\0"
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in b"\0" + environ.read_bytes() + b"\0" and \
                    (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                found.append(int(environ.parent.name))
        except (OSError, IndexError):
            continue
    return found
_PREVIOUS: dict[int, object] = {}  # the handlers ours replaced, per signal


def _kill_groups() -> None:
    for pgid in list(_GROUPS):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _GROUPS.discard(pgid)
    for marker in list(_MARKERS):
        _kill_marked(marker)
        _MARKERS.discard(marker)


def _kill_marked(marker: str) -> None:
    for pid in marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _on_signal(signum: int, frame: object) -> None:
    """Kill every cluster group, then let the signal do what it did before (re-raise it)."""
    _kill_groups()
    previous = _PREVIOUS.get(signum, signal.SIG_DFL)
    signal.signal(signum, previous)  # type: ignore[arg-type]
    if callable(previous):
        previous(signum, frame)  # e.g. Python's SIGINT handler: KeyboardInterrupt
    elif previous != signal.SIG_IGN:
        os.kill(os.getpid(), signum)  # the default action: this process ends by the signal


def _guard() -> None:
    """atexit and the SIGTERM/SIGINT handlers, installed once (from the main thread only)."""
    if _PREVIOUS or threading.current_thread() is not threading.main_thread():
        return
    atexit.register(_kill_groups)
    for sig in (signal.SIGTERM, signal.SIGINT):
        _PREVIOUS[sig] = signal.getsignal(sig)
        signal.signal(sig, _on_signal)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml_value(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value).lower() if isinstance(value, bool) else repr(value)


class Cluster:
    """A SuperLink and SuperNodes started as subprocesses; ``close`` kills every process group."""

    def __init__(self, root: Path, tls: bool) -> None:
        self.root = root
        self.tls = tls
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        home = root / "flwr-home"
        home.mkdir(parents=True)
        self.env = dict(os.environ, FLWR_HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
                        OMP_NUM_THREADS="1", **{MARKER: str(root)})
        connection = f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{self.port}"\n'
        if tls:
            certs = root / "certs"
            subprocess.run(["bash", str(REPO / "scripts" / "make_certs.sh"), str(certs)], check=True,
                           capture_output=True, timeout=60)
            self.ca = certs / "ca.crt"
            connection += f'root-certificates = "{self.ca}"\n'
            self.security = ["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(certs / "server.pem"),
                             "--ssl-keyfile", str(certs / "server.key")]
            self.node_security = ["--root-certificates", str(self.ca)]
        else:
            connection += "insecure = true\n"
            self.security = self.node_security = ["--insecure"]
        (home / "config.toml").write_text(connection)

    def _start(self, name: str, args: list[str]) -> None:
        _guard()
        log = (self.root / f"{name}.log").open("w")
        # its own session: its own process group, which its children (SuperExec, apps) join
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.root, start_new_session=True)
        _GROUPS.add(proc.pid)
        _MARKERS.add(str(self.root))
        self.procs[name] = proc

    def groups(self) -> list[int]:
        """The process group of every process started (its pid: each leads its own session)."""
        return [proc.pid for proc in self.procs.values()]

    def start_superlink(self) -> None:
        self._start("superlink", [str(BIN / "flower-superlink"), *self.security, "--port", str(self.port),
                                  "--disable-runtime-dependency-installation"])

    def start(self) -> None:
        self.start_superlink()
        for k, model in enumerate(MODELS):
            self._start(f"supernode{k}", [
                str(BIN / "flower-supernode"), *self.node_security, "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--max-wait-time", "120",
                "--node-config", f'partition-id={k} num-partitions={len(MODELS)} model="{model}"'])

    def flwr_run(self, out: Path, **overrides) -> None:
        from pfedlora.federation.flower import APP_DIR

        run_config = {**RUN, **overrides, "out-dir": str(out)}
        text = " ".join(f"{key}={toml_value(value)}" for key, value in run_config.items())
        # `flwr run` submits the run and returns; the SuperLink may still be starting, so retry
        deadline = time.monotonic() + 120
        while True:
            done = subprocess.run([str(BIN / "flwr"), "run", str(APP_DIR), "test", "--run-config", text],
                                  env=self.env, cwd=self.root, capture_output=True, text=True, timeout=120)
            if done.returncode == 0 and "Successfully started run" in done.stdout:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"flwr run failed:\n{done.stdout}\n{done.stderr}")
            time.sleep(2)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        _GROUPS.discard(proc.pid)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:  # the group also holds the SuperExec and ServerApp/ClientApp children
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _GROUPS.discard(proc.pid)
            proc.wait(timeout=10)
        _kill_marked(str(self.root))  # a SuperExec in a session of its own
        _MARKERS.discard(str(self.root))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))
