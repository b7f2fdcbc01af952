"""Trackers as sinks, read back with the trackers' own readers: TensorBoard's EventAccumulator on the
event files and MLflow's MlflowClient on a local SQLite store (no mocks)."""

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from pfedlora.config import build_config  # noqa: E402
from pfedlora.errors import UserError  # noqa: E402
from pfedlora.federation.simulation import resume, run  # noqa: E402
from pfedlora.metrics.tracking import STATE_NAME, flatten  # noqa: E402

# 5 clients with the smallest CNN, 3 rounds: a few seconds
TINY = {"num_clients": 5, "rounds": 3, "model_pool": ["cnn5"], "train": {"batch_size": 32}, "checkpoint_every": 1}


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _config(tmp_path: Path, **extra):
    return build_config({**TINY, "tracking": {"sinks": ["tensorboard", "mlflow"], "mlflow_uri": _store(tmp_path),
                                              "experiment": "tests"}, **extra})


def _csv_rows(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _tensorboard(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    return events


def _mlflow_run(tmp_path: Path, run_dir: Path):
    run_id = json.loads((run_dir / STATE_NAME).read_text())["mlflow"]["run_id"]
    client = MlflowClient(_store(tmp_path))
    return client, client.get_run(run_id)


def test_every_metrics_column_config_summary_and_files_reach_tensorboard_and_mlflow(tmp_path):
    out = tmp_path / "run"
    summary = run(_config(tmp_path), out, log=lambda _: None)
    rows = _csv_rows(out)
    columns = [key for key in rows[0] if key != "round"]
    assert {"mean_acc", "std_acc", "up_bytes", "train_flops", "adapter_share"} <= set(columns)

    events = _tensorboard(out)
    for column in columns:  # every column, every evaluated round, at step = round (float32 in TensorBoard)
        logged = [(e.step, e.value) for e in events.Scalars(column)]
        assert [step for step, _ in logged] == [int(row["round"]) for row in rows]
        assert [value for _, value in logged] == pytest.approx([row[column] for row in rows], rel=1e-5, abs=1e-6)
    assert events.Scalars("summary.final_accuracy")[0].value == pytest.approx(summary["final_accuracy"], rel=1e-6)
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")

    client, tracked = _mlflow_run(tmp_path, out)
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert client.get_experiment(tracked.info.experiment_id).name == "tests"
    config_yaml = yaml.safe_load((out / "config.yaml").read_text())
    assert tracked.data.params == {key: str(value) for key, value in flatten(config_yaml).items()}
    for column in columns:
        history = client.get_metric_history(tracked.info.run_id, column)
        assert [(m.step, m.value) for m in history] == [(int(r["round"]), pytest.approx(r[column], abs=1e-6))
                                                         for r in rows]
    assert tracked.data.metrics["summary.final_accuracy"] == pytest.approx(summary["final_accuracy"])
    artifacts = {f.path for f in client.list_artifacts(tracked.info.run_id)}
    assert {"config.yaml", "metrics.csv", "summary.json"} <= artifacts
    # tracking is not part of the run's identity: config.yaml is that of an untracked run
    assert "tracking" not in config_yaml


def test_a_resumed_run_continues_the_same_tracked_run_without_duplicated_steps(tmp_path, interrupted_run):
    out = tmp_path / "run"
    # stopped in round 2 after its metrics row (and its tracked step), before its checkpoint
    interrupted_run(_config(tmp_path), out, at_round=2)
    client, first = _mlflow_run(tmp_path, out)
    assert first.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(first.info.run_id, "mean_acc")] == [1, 2]

    resume(out, log=lambda _: None)  # --resume: config.yaml has no tracking; tracking.json continues it
    client, tracked = _mlflow_run(tmp_path, out)
    assert tracked.info.run_id == first.info.run_id and tracked.info.status == "FINISHED"
    assert len(client.search_runs([tracked.info.experiment_id])) == 1
    rows = _csv_rows(out)
    for column in ("mean_acc", "train_loss", "cum_up_bytes"):
        history = client.get_metric_history(tracked.info.run_id, column)
        assert [m.step for m in history] == [1, 2, 3]
        assert [m.value for m in history] == pytest.approx([row[column] for row in rows], abs=1e-6)
        scalars = _tensorboard(out).Scalars(column)  # round 2's first writing purged (purge_step)
        assert [e.step for e in scalars] == [1, 2, 3]
        assert [e.value for e in scalars] == pytest.approx([row[column] for row in rows], rel=1e-5)


def _disk_full(run_dir: Path, database: Path) -> list[str]:
    """From now on every write to the trackers' files fails with ENOSPC, as on a full disk: TensorBoard's
    event file (opened for each append) becomes a link to /dev/full, and this process's open
    descriptors of the MLflow database are pointed at /dev/full."""
    broken = []
    for events in run_dir.glob("events.out.tfevents.*"):
        link = events.with_name(events.name + ".link")
        link.symlink_to("/dev/full")
        os.replace(link, events)
        broken.append(events.name)
    full = os.open("/dev/full", os.O_RDWR)
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target == str(database):
                os.dup2(full, int(fd))
                broken.append(database.name)
    finally:
        os.close(full)
    return broken


@pytest.mark.skipif(not Path("/dev/full").exists() or not Path("/proc/self/fd").is_dir(), reason="needs Linux /dev/full")
def test_a_tracker_failing_mid_run_is_one_warning_line_and_the_run_completes(tmp_path):
    out = tmp_path / "run"
    lines: list[str] = []
    broken: list[str] = []

    def disk_full_after_round_1(round_index, rounds, row):
        if round_index == 1:
            broken.extend(_disk_full(out, tmp_path / "mlflow.db"))

    summary = run(_config(tmp_path, rounds=4), out, progress=disk_full_after_round_1, log=lines.append)
    assert any(name.startswith("events.out.tfevents") for name in broken) and "mlflow.db" in broken
    warnings = [line for line in lines if line.startswith("warning: tracking:")]
    assert len(warnings) == 2, warnings  # one line per tracker, not one per round
    assert any("tensorboard failed" in w for w in warnings) and any("mlflow failed" in w for w in warnings)
    events_log = (out / "events.log").read_text()
    assert all(w in events_log for w in warnings)
    assert [row["round"] for row in _csv_rows(out)] == [1, 2, 3, 4]  # the run is whole
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] == summary["final_accuracy"]


def test_an_unreachable_tracking_server_is_one_warning_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    lines: list[str] = []
    config = build_config({**TINY, "rounds": 1, "tracking": {"sinks": ["mlflow"], "mlflow_uri": "http://127.0.0.1:9"}})
    run(config, tmp_path / "run", log=lines.append)
    warnings = [line for line in lines if "tracking" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tracking: mlflow could not start")
    assert (tmp_path / "run" / "summary.json").is_file()


def test_tracking_config_shorthand_and_bad_sinks():
    assert build_config({"tracking": ["tensorboard", "mlflow"]}).tracking.sinks == ["tensorboard", "mlflow"]
    assert build_config({}, ["tracking=[mlflow]"]).tracking.sinks == ["mlflow"]
    with pytest.raises(UserError, match="tracking.sinks"):
        build_config({"tracking": ["wandb_online"]})
    assert "tracking" not in build_config({"tracking": ["mlflow"]}).to_dict()


@pytest.mark.slow
def test_compare_is_one_experiment_with_a_parent_run_and_one_tensorboard_folder_per_run(tmp_path):
    from pfedlora.experiments.compare import compare

    document = {**TINY, "rounds": 2, "tracking": {"sinks": ["tensorboard", "mlflow"], "mlflow_uri": _store(tmp_path)}}
    out = tmp_path / "cmp"
    compare(document, [], ["standalone", "pfedlora"], [0, 1], out, announce=lambda _: None)
    client = MlflowClient(_store(tmp_path))
    experiment = client.get_experiment_by_name("cmp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "compare"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["pfedlora seed 0", "pfedlora seed 1", "standalone seed 0",
                                                         "standalone seed 1"]
    assert {"comparison.csv", "comparison.md"} <= {f.path for f in client.list_artifacts(parents[0].info.run_id)}
    figures = {f.path for f in client.list_artifacts(parents[0].info.run_id, "figures")}
    assert "figures/accuracy_vs_round.png" in figures  # the comparison's report figures
    for algorithm in ("standalone", "pfedlora"):
        for seed in (0, 1):
            assert len(list((out / algorithm / f"seed{seed}").glob("events.out.tfevents.*"))) == 1
    # the same command again reuses the finished runs and the parent run: nothing is logged twice
    compare(document, [], ["standalone", "pfedlora"], [0, 1], out, announce=lambda _: None)
    assert len(client.search_runs([experiment.experiment_id])) == 5


def test_report_figures_of_a_tracked_run_reach_its_tracked_run(tmp_path):
    from pfedlora.cli import main

    out = tmp_path / "run"
    run(_config(tmp_path, rounds=2), out, log=lambda _: None)
    assert main(["report", str(out)]) == 0
    figures = sorted(path.stem for path in out.glob("*.png"))
    assert "accuracy_vs_round" in figures
    client, tracked = _mlflow_run(tmp_path, out)
    assert {f"figures/{stem}.png" for stem in figures} <= {
        f.path for f in client.list_artifacts(tracked.info.run_id, "figures")}
    assert tracked.info.status == "FINISHED"
    images = _tensorboard(out).Tags()["images"]
    assert {f"figures/{stem}" for stem in figures} <= set(images)
    assert [e.step for e in _tensorboard(out).Scalars("mean_acc")] == [1, 2]  # nothing else logged again
