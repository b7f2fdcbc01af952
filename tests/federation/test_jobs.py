"""`compare` / `sweep` with --jobs N and --executor ray: the same outputs as one run after another."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pfedlora.cli import main
from pfedlora.errors import UserError
from pfedlora.federation.checkpoint import checkpoint_round
from pfedlora.federation.jobs import resolve_jobs

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--set", "num_clients=5", "--set", "rounds=2", "--set", "train.batch_size=32"]


def _rows(path: Path, drop: tuple[str, ...] = ("wall_s",)) -> list[dict]:
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def _same_outputs(first: Path, second: Path, table: str) -> None:
    assert (first / table).read_text() == (second / table).read_text()
    runs = sorted(p.relative_to(first) for p in first.rglob("metrics.csv"))
    assert runs and runs == sorted(p.relative_to(second) for p in second.rglob("metrics.csv"))
    for run in runs:
        assert _rows(first / run) == _rows(second / run), run
        assert (first / run).with_name("config.yaml").read_text() == (second / run).with_name("config.yaml").read_text()


@pytest.fixture(scope="module")
def serial_compare(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    assert main(["compare", "--algorithms", "pfedlora,fedproto", "--seeds", "0,1", *SMALL, "--out", str(out)]) == 0
    return out


def test_compare_with_two_jobs_writes_what_one_job_writes(serial_compare, tmp_path, capsys):
    out = tmp_path / "jobs2"
    assert main(["compare", "--algorithms", "pfedlora,fedproto", "--seeds", "0,1", *SMALL, "--out", str(out),
                 "--jobs", "2"]) == 0
    _same_outputs(serial_compare, out, "comparison.csv")
    printed = capsys.readouterr()
    assert "running 4 runs on 2 processes" in printed.out
    assert "runs 4/4 done" in printed.err  # the aggregated progress display
    # a second call reuses every finished run
    assert main(["compare", "--algorithms", "pfedlora,fedproto", "--seeds", "0,1", *SMALL, "--out", str(out),
                 "--jobs", "2"]) == 0
    assert capsys.readouterr().out.count(": reusing") == 4


def test_capped_engine_workers_keep_the_numbers_of_forked_workers(tmp_path, monkeypatch):
    # engine.workers 2 at engine.threads 2: alone a run forks 2 one-thread workers; under --jobs the
    # cap trains in-process, which must then also use one thread
    monkeypatch.setattr("pfedlora.federation.jobs.available_cores", lambda: 2)
    args = ["compare", "--algorithms", "standalone", "--seeds", "0,1", *SMALL, "--set", "engine.workers=2",
            "--set", "engine.threads=2"]
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    assert main([*args, "--out", str(tmp_path / "jobs"), "--jobs", "2"]) == 0
    _same_outputs(tmp_path / "serial", tmp_path / "jobs", "comparison.csv")


def test_sweep_with_two_jobs_writes_what_one_job_writes(tmp_path):
    args = ["sweep", "--grid", "adapter.rank=[4,8]", "--algorithms", "pfedlora", "--seeds", "0", *SMALL]
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    assert main([*args, "--out", str(tmp_path / "jobs"), "--jobs", "auto"]) == 0
    _same_outputs(tmp_path / "serial", tmp_path / "jobs", "sweep.csv")


def test_a_failing_run_stops_the_jobs_with_one_line_and_exit_2(tmp_path, capsys):
    code = main(["compare", "--algorithms", "pfedlora,standalone", "--seeds", "0", *SMALL, "--jobs", "2",
                 "--set", "dataset.name=cifar10", "--set", f"dataset.path={tmp_path / 'missing'}",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("pfedlora: error: dataset.path") and "does not exist" in err[-1]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_jobs_value_exits_2(tmp_path, capsys, value):
    assert main(["compare", "--algorithms", "standalone", "--seeds", "0", "--jobs", value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--jobs expects a positive integer or 'auto'" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_ray_options_need_the_ray_executor(tmp_path, capsys):
    assert main(["compare", "--seeds", "0", "--ray-address", "auto", "--out", str(tmp_path)]) == 2
    assert "need --executor ray" in capsys.readouterr().err


def test_resolve_jobs():
    assert resolve_jobs("3") == 3 and resolve_jobs("auto") >= 1
    with pytest.raises(UserError):
        resolve_jobs("0")


@pytest.mark.slow
def test_ray_executor_on_a_local_instance_writes_what_one_job_writes(serial_compare, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'pfedlora[ray]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the test's own local Ray instance
    try:
        for shared in ([], ["--ray-shared-fs"]):  # files returned to the driver, or written by the tasks
            out = tmp_path / f"ray{len(shared)}"
            assert main(["compare", "--algorithms", "pfedlora,fedproto", "--seeds", "0,1", *SMALL, "--out", str(out),
                         "--executor", "ray", *shared]) == 0
            _same_outputs(serial_compare, out, "comparison.csv")
    finally:
        ray.shutdown()


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="sends Ctrl-C to a process group")
def test_ctrl_c_stops_jobs_once_with_a_checkpoint_each(tmp_path):
    """Issue 30: Ctrl-C reaches every process of the terminal's group. Only the driver reacts: it says
    so once, asks each running run (SIGTERM) to stop at its round boundary, and waits; each writes a
    checkpoint (checkpoint_every 0: only a signal writes one) that a second call resumes from."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pfedlora.cli", "compare", "--algorithms", "pfedlora,fedproto", "--seeds", "0",
               "--set", "num_clients=5", "--set", "rounds=200", "--set", "train.batch_size=64",
               "--set", "checkpoint_every=0", "--out", str(out), "--jobs", "2"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True,  # its own group, as a terminal's foreground job
                              # a shell's background job (CI, an agent) inherits SIGINT ignored; a terminal's does not
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while len([p for p in out.rglob("metrics.csv") if len(p.read_text().splitlines()) >= 2]) < 2:
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "the runs did not reach round 1"
            time.sleep(0.3)
        os.killpg(driver.pid, signal.SIGINT)
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, stderr
    assert stderr.count("interrupted: 2 running run(s) stop after their current round") == 1, stderr
    assert "SIGINT: stopping" not in stderr  # no child reacted to the terminal's Ctrl-C itself
    checkpoints = sorted(out.rglob("checkpoint.pt"))
    assert len(checkpoints) == 2, stderr
    assert all(1 <= (checkpoint_round(c.parent) or 0) < 200 for c in checkpoints)


def _interrupt_at(monkeypatch, at_round: int) -> None:
    """Every run_or_resume from now on stops in round ``at_round`` (after its metrics row, before its
    checkpoint), as a failure or a kill there would: the run directory keeps the checkpoint before it."""
    from pfedlora.federation import simulation

    real = simulation.run_or_resume

    def stopping(config, out_dir, *, progress=None, log=print):
        def stop(round_index, rounds, row):
            if round_index == at_round:
                raise RuntimeError(f"injected failure in round {round_index}")
            if progress is not None:
                progress(round_index, rounds, row)

        return real(config, out_dir, progress=stop, log=log)

    monkeypatch.setattr(simulation, "run_or_resume", stopping)


RESUMABLE = ["--set", "num_clients=5", "--set", "rounds=4", "--set", "train.batch_size=32", "--set", "checkpoint_every=1"]


def test_a_ray_task_without_a_shared_filesystem_returns_its_checkpoint_and_resumes_from_the_one_it_is_sent(
        tmp_path, monkeypatch):
    """Issue 30: a Ray task without a shared filesystem used to return files only when its run finished,
    and never received the driver's unfinished run, so the run restarted from round 1. The task (called
    here in this process, as a Ray worker calls it) returns the failed run's directory with its
    checkpoint, and resumes from the directory it is sent."""
    import torch

    from pfedlora.config import build_config
    from pfedlora.federation.jobs import _ray_task, _unfinished_files, _write_files

    config = build_config({"num_clients": 5, "rounds": 4, "train": {"batch_size": 32}, "checkpoint_every": 1})
    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as patch:
            _interrupt_at(patch, 3)
            files, error = _ray_task(config.to_dict(), str(tmp_path / "run"), os.getcwd(), False)
        assert isinstance(error, RuntimeError) and "injected failure in round 3" in str(error)
        run_dir = tmp_path / "run"
        _write_files(run_dir, files)
        assert checkpoint_round(run_dir) == 2
        before = _rows(run_dir / "metrics.csv", drop=())
        sent = _unfinished_files(run_dir)
        assert sent is not None and {"config.yaml", "checkpoint.pt", "metrics.csv"} <= set(sent)
        files, error = _ray_task(config.to_dict(), str(run_dir), os.getcwd(), False, sent)
    finally:
        torch.set_num_threads(threads)
    assert error is None and "summary.json" in files
    _write_files(run_dir, files)
    after = _rows(run_dir / "metrics.csv", drop=())
    assert [int(r["round"]) for r in after] == [1, 2, 3, 4]
    # rounds 1-2 are the checkpoint's rows, wall_s included: the run continued, it did not start over
    assert after[:2] == [r for r in before if int(r["round"]) <= 2]
    assert _unfinished_files(run_dir) is None  # finished: nothing to send next time


@pytest.mark.slow
def test_ray_without_a_shared_filesystem_resumes_an_unfinished_run_from_its_checkpoint(tmp_path, monkeypatch):
    """Issue 30: an unfinished run under --out (checkpoint of round 2 of 4) is sent with its Ray task
    and continues from round 3; before, the task started it again from round 1 in its temporary
    directory. The finished run's numbers equal an uninterrupted run's."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'pfedlora[ray]')")
    import ray

    args = ["compare", "--algorithms", "pfedlora", "--seeds", "0", *RESUMABLE]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)
        with pytest.raises(RuntimeError, match="injected failure in round 3"):
            main([*args, "--out", str(out)])
    run_dir = out / "pfedlora" / "seed0"
    assert checkpoint_round(run_dir) == 2
    before = _rows(run_dir / "metrics.csv", drop=())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the test's own local Ray instance
    try:
        assert main([*args, "--out", str(out), "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    after = _rows(run_dir / "metrics.csv", drop=())
    assert [int(r["round"]) for r in after] == [1, 2, 3, 4]
    assert after[:2] == [r for r in before if int(r["round"]) <= 2]  # wall_s included: not run again
    assert _rows(run_dir / "metrics.csv") == _rows(tmp_path / "whole" / "pfedlora" / "seed0" / "metrics.csv")
