"""Checkpoints: a real SIGKILL / SIGTERM of a real ``pfedlora run`` process, then ``--resume``."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.federation.checkpoint import CHECKPOINT_NAME, checkpoint_round, load_checkpoint, save_checkpoint
from pfedlora.federation.simulation import run

SRC = Path(__file__).resolve().parents[2] / "src"
# 5 clients (2 classes each) with the smallest CNN, 3 rounds: the smallest federation that still has a middle
TINY = {"num_clients": 5, "rounds": 3, "model_pool": ["cnn5"], "train": {"batch_size": 32}, "checkpoint_every": 1}
OVERRIDES = ["--set", "num_clients=5", "--set", "rounds=3", "--set", "model_pool=[cnn5]",
             "--set", "train.batch_size=32", "--set", "checkpoint_every=1"]


def _rows(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(handle)]


def _accuracies(run_dir):
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return {k: summary[k] for k in ("final_accuracy", "final_std", "best_accuracy", "best_round", "client_accuracies")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    run(build_config(TINY), out, log=lambda _: None)
    return out


def _start(out: Path, *extra: str, new_session: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "pfedlora.cli", "run", *OVERRIDES, *extra, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=new_session)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, round_index: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before checkpoint {round_index}: {proc.stderr.read()[-2000:]}")
        if (out / CHECKPOINT_NAME).exists() and (checkpoint_round(out) or 0) >= round_index:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint for round {round_index} within {timeout} s")


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(reference, tmp_path, capsys):
    out = tmp_path / "killed"
    proc = _start(out)
    _wait_for_checkpoint(proc, out, 1)
    assert proc.poll() is None, "the run must still be going when it is killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint_round(out)
    assert killed_at is not None and 1 <= killed_at < 3
    assert not (out / "summary.json").exists()

    assert main(["run", "--resume", str(out)]) == 0
    assert f"round {killed_at + 1} of 3" in capsys.readouterr().out
    assert _rows(out) == _rows(reference)
    assert [int(r["round"]) for r in _rows(out)] == [1, 2, 3]
    assert _accuracies(out) == _accuracies(reference)
    assert not list(out.glob(".*.tmp")), "no temp files left behind"


@pytest.mark.slow
def test_sigterm_stops_at_a_round_boundary_with_exit_143_and_resumes(reference, tmp_path):
    out = tmp_path / "terminated"
    proc = _start(out)
    _wait_for_checkpoint(proc, out, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-2000:]
    stopped = checkpoint_round(out)
    last = err.strip().splitlines()[-1]
    assert last == f"pfedlora: interrupted after round {stopped}; resume with: pfedlora run --resume {out}"
    assert "Traceback" not in err
    assert [int(r["round"]) for r in _rows(out)] == list(range(1, stopped + 1))

    assert main(["run", "--resume", str(out)]) == 0
    assert _rows(out) == _rows(reference)
    assert _accuracies(out) == _accuracies(reference)


def _fake_checkpoint(run_dir: Path, config) -> None:
    save_checkpoint(run_dir, config, {"round": 1, "server_state": {"w": torch.zeros(2)}, "broadcast": {"w": torch.zeros(2)},
                                      "client_states": {0: {"w": torch.ones(2)}}, "history": [], "client_accuracies": [],
                                      "pending": {}, "costs": {}, "elapsed": 0.0})


def test_checkpoint_round_trip_and_config_hash(tmp_path):
    config = build_config(TINY)
    _fake_checkpoint(tmp_path, config)
    loaded = load_checkpoint(tmp_path, config)
    assert loaded["round"] == 1 and torch.equal(loaded["client_states"][0]["w"], torch.ones(2))
    # the device may change between the run and its resumption; the seed may not
    assert load_checkpoint(tmp_path, build_config({**TINY, "device": "auto"})) is not None
    with pytest.raises(UserError, match="different config"):
        load_checkpoint(tmp_path, build_config({**TINY, "seed": 1}))
    assert load_checkpoint(tmp_path / "nothing-here", config) is None


def _run_dir_with_checkpoint(tmp_path: Path) -> Path:
    config = build_config(TINY)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    _fake_checkpoint(out, config)
    return out


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_checkpoint_exits_2_with_one_line(tmp_path, capsys, damage):
    out = _run_dir_with_checkpoint(tmp_path)
    path = out / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "corrupted or truncated" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_checkpoint_from_another_config_exits_2(tmp_path, capsys):
    out = _run_dir_with_checkpoint(tmp_path)
    document = yaml.safe_load((out / "config.yaml").read_text())
    document["adapter"]["rank"] = 4
    (out / "config.yaml").write_text(yaml.safe_dump(document))
    assert main(["run", "--resume", str(out)]) == 2
    assert "different config" in capsys.readouterr().err


def test_resume_rejects_overrides_and_non_run_directories(tmp_path, capsys):
    out = _run_dir_with_checkpoint(tmp_path)
    assert main(["run", "--resume", str(out), "--set", "rounds=9"]) == 2
    assert "cannot be combined with --set" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_bad_data_path_exits_2_and_an_existing_run_directory_is_untouched(tmp_path, capsys):
    assert main(["run", "--set", "dataset.name=cifar10", "--set", f"dataset.path={tmp_path / 'no-such.tar.gz'}",
                 "--out", str(tmp_path / "fresh")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no-such.tar.gz" in err
    out = _run_dir_with_checkpoint(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["run", *OVERRIDES, "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_comparison_continues_an_interrupted_run_from_its_checkpoint(reference, tmp_path, interrupted_run):
    """compare/sweep call run_or_resume: an unfinished run of the same config resumes, bit-exact."""
    from pfedlora.federation.simulation import run_or_resume

    config = build_config(TINY)

    interrupted_run(config, tmp_path / "run", at_round=2)
    assert checkpoint_round(tmp_path / "run") == 1 and not (tmp_path / "run" / "summary.json").exists()
    lines = []
    run_or_resume(config, tmp_path / "run", log=lines.append)
    assert "resuming after round 1 of 3" in lines
    assert _rows(tmp_path / "run") == _rows(reference) and _accuracies(tmp_path / "run") == _accuracies(reference)
    # another config in the same directory starts over instead of resuming
    other = build_config({**TINY, "seed": 1})
    lines.clear()
    run_or_resume(other, tmp_path / "run", log=lines.append)
    assert not any(line.startswith("resuming") for line in lines)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_forked_workers_stops_instead_of_hanging(tmp_path):
    """SIGTERM to the whole group (a job scheduler's cancel, ``kill -- -PGID``) kills the workers
    mid-round too: the run must still end with exit 143 and a resumable checkpoint, not wait forever."""
    out = tmp_path / "group"
    proc = _start(out, "--set", "engine.workers=2", "--set", "rounds=30", new_session=True)
    _wait_for_checkpoint(proc, out, 1)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "resume with: pfedlora run --resume" in err.strip().splitlines()[-1]
    assert (checkpoint_round(out) or 0) >= 1
