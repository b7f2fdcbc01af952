"""Experiment trackers as sinks: every metrics.csv row also goes to TensorBoard and/or MLflow.

``tracking: [tensorboard, mlflow]`` (``pip install 'pfedlora[tracking]'``). Per evaluated round every
metrics.csv column is logged at step = round; the config (flattened, dotted keys) as hyper-parameters;
at the end the summary (numbers as ``summary.<key>``: with a dot, not a slash, MLflow's charts keep
them beside the per-round metrics instead of in a section of their own above them) and the run
directory's files and figures.

* TensorBoard: event files in the run directory itself, so ``tensorboard --logdir OUT`` of a
  comparison or sweep shows one run per run directory (``pfedlora/seed0``, ...).
* MLflow: one MLflow run per pfedlora run (MlflowClient, explicit run ids); a comparison or sweep is
  one experiment with a parent run and its runs nested under it (:func:`open_group`).

The run directory's ``tracking.json`` records the sinks and the MLflow run, so ``--resume`` (or a
comparison continuing an interrupted run) continues the same tracked run: TensorBoard purges the steps
after the checkpoint (``purge_step``), MLflow skips the rounds it already holds, so no step is logged
twice. A tracker failing (import, disk full, server gone) is one warning line and that tracker is off
for the rest of the run; metrics.csv and summary.json never depend on a tracker.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pfedlora.config import TrackingConfig
from pfedlora.metrics.run_dir import write_json

STATE_NAME = "tracking.json"
DEFAULT_EXPERIMENT = "pfedlora"
# the files of a run directory logged as artifacts at the end (figures: every *.png)
RUN_ARTIFACTS = ("config.yaml", "metrics.csv", "summary.json", "partition.json", "events.log")
# the row key that is the step
STEP_KEY = "round"


def flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": 0.01}``; lists and None as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, name + ".")
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a row (booleans and text left out)."""
    return {key: float(value) for key, value in row.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


# --- the sinks ---------------------------------------------------------------------------------


class TensorBoardSink:
    """Scalars per round, the config as hparams and text, the summary and figures, in ``log_dir``."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, config_document: Mapping[str, Any] | None, first_round: int) -> None:
        """``config_document`` None: a finished run's folder reopened for more files (no hparams again)."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.log_dir = log_dir
        # purge_step: a resumed run drops the steps logged after its checkpoint (TensorBoard's own rule)
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=first_round if first_round > 1 else None)
        self._session_end = None
        if config_document is None:
            return
        experiment, start, self._session_end = hparams(flatten(config_document), {"mean_acc": 0.0})
        if first_round == 1:
            file_writer = self.writer._get_file_writer()
            file_writer.add_summary(experiment)
            file_writer.add_summary(start)
            self.writer.add_text("config", "```yaml\n" + json.dumps(config_document, indent=2) + "\n```", 0)
        self.writer.flush()

    def state(self) -> dict[str, Any]:
        return {"log_dir": str(self.log_dir)}

    def log_row(self, step: int, row: Mapping[str, Any]) -> None:
        for key, value in _numbers(row).items():
            if key != STEP_KEY:
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_summary(self, step: int, summary: Mapping[str, Any]) -> None:
        for key, value in _numbers(summary).items():
            self.writer.add_scalar(f"summary.{key}", value, step)
        self.writer.add_text("summary", "```json\n" + json.dumps(summary, indent=2) + "\n```", step)
        if self._session_end is not None:
            self.writer._get_file_writer().add_summary(self._session_end)
        self.writer.flush()

    def log_files(self, paths: Iterable[Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            if path.suffix.lower() == ".png":
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(f"figures/{path.stem}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowSink:
    """One MLflow run: params from the config, metrics per round (step = round), summary, artifacts."""

    name = "mlflow"

    def __init__(self, settings: TrackingConfig, config_document: Mapping[str, Any], run_name: str,
                 saved: Mapping[str, Any] | None) -> None:
        from mlflow.tracking import MlflowClient

        import mlflow

        uri = (saved or {}).get("tracking_uri") or settings.mlflow_uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        self.logged_step = 0
        if saved and saved.get("run_id"):  # the same tracked run continues
            self.run_id, self.experiment_id = saved["run_id"], saved["experiment_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "mean_acc")
            self.logged_step = max((metric.step for metric in history), default=0)
            return
        name = settings.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.experiment_id = experiment_id(self.client, name, uri)
        tags = {f"pfedlora.{key}": str(config_document[key]) for key in ("algorithm", "seed") if key in config_document}
        if settings.parent_run_id:
            tags["mlflow.parentRunId"] = settings.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=settings.run_name or run_name, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(key, str(value)[:6000]) for key, value in flatten(config_document).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def state(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id, "run_id": self.run_id}

    def log_row(self, step: int, row: Mapping[str, Any]) -> None:
        if step <= self.logged_step:  # already logged before the interruption (same numbers: same seed)
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value in _numbers(row).items() if key != STEP_KEY]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.logged_step = step

    def log_summary(self, step: int, summary: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"summary.{key}", value, stamp, step)
                                                    for key, value in _numbers(summary).items()])

    def log_files(self, paths: Iterable[Path], step: int) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), "figures" if path.suffix.lower() == ".png" else None)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The MLflow experiment ``name`` (created when missing; with a SQLite store its artifacts go
    beside the database, not into the current directory)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        location = (database.resolve().parent / "mlartifacts" / safe).as_uri()
    # a training workflow: MLflow's UI files it under model training, not GenAI
    return client.create_experiment(name, artifact_location=location,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


# --- the run's trackers ------------------------------------------------------------------------


class Trackers:
    """The sinks of one run; a sink that raises is reported once (``warn``) and dropped."""

    def __init__(self, out: Path, sinks: list[Any], settings: TrackingConfig, warn: Callable[[str], None]) -> None:
        self.out = out
        self.sinks = sinks
        self.settings = settings
        self.warn = warn

    def _each(self, what: str, call: Callable[[Any], None]) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as exc:  # a tracker never ends the run
                self.sinks.remove(sink)
                self.warn(f"warning: tracking: {sink.name} failed ({what}: {_reason(exc)}); it is off for the rest "
                          "of this run, metrics.csv and summary.json are complete")

    def log_row(self, row: Mapping[str, Any]) -> None:
        step = int(row[STEP_KEY])
        self._each(f"round {step}", lambda sink: sink.log_row(step, row))

    def log_restored(self, metrics_csv: Path) -> None:
        """A resumed run's metrics.csv rows (up to its checkpoint) to the sinks that skip what they hold
        (MLflow: rounds it missed, e.g. after it failed, are filled in; TensorBoard keeps its steps)."""
        if not self.sinks or not Path(metrics_csv).is_file():
            return
        with Path(metrics_csv).open(newline="") as handle:
            history = [{key: float(value) for key, value in row.items() if value not in ("", None)}
                       for row in csv.DictReader(handle)]
        for row in history:
            step = int(row[STEP_KEY])
            self._each(f"round {step}", lambda sink: sink.log_row(step, row) if sink.name == "mlflow" else None)

    def finish(self, step: int) -> None:
        """summary.json as written, the run directory's files and figures; the runs marked finished."""
        try:
            summary = json.loads((self.out / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        files = [self.out / name for name in RUN_ARTIFACTS if (self.out / name).is_file()]
        files += sorted(self.out.glob("*.png"))
        self._each("summary", lambda sink: sink.log_summary(step, summary))
        self._each("artifacts", lambda sink: sink.log_files(files, step))
        self.close("FINISHED")

    def close(self, status: str) -> None:
        self._each("close", lambda sink: sink.close(status))
        self.sinks = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is not None:  # stopped (signal, interruption) or failed: the tracked run says so
            from pfedlora.errors import RunInterrupted

            interrupted = issubclass(kind, (RunInterrupted, KeyboardInterrupt))
            self.close("KILLED" if interrupted else "FAILED")


def saved_state(out: Path) -> dict[str, Any] | None:
    """The run directory's tracking.json (None when absent or unreadable)."""
    try:
        state = json.loads((Path(out) / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def open_trackers(settings: TrackingConfig, config_document: Mapping[str, Any], out: Path, *, resuming: bool,
                  first_round: int, warn: Callable[[str], None]) -> Trackers:
    """The run's sinks. ``resuming``: continue the tracked run recorded in ``out/tracking.json`` (its
    sinks, its MLflow run) instead of starting new ones."""
    saved = saved_state(out)
    if saved is not None and (resuming or not settings.sinks):
        # --resume reads config.yaml, which leaves tracking out: the run's own tracking.json says where
        settings = TrackingConfig.model_validate(saved.get("settings", {}))
    if not resuming:
        saved = None  # (a restart before the first checkpoint): new tracked runs
    sinks: list[Any] = []
    state: dict[str, Any] = {"settings": settings.model_dump(mode="json")}
    for name in settings.sinks:
        try:
            if name == "tensorboard":
                sink: Any = TensorBoardSink(out, config_document, first_round)
            else:
                sink = MlflowSink(settings, config_document, out.name, (saved or {}).get("mlflow"))
        except Exception as exc:
            warn(f"warning: tracking: {name} could not start ({_reason(exc)}); the run goes on without it")
            continue
        sinks.append(sink)
        state[name] = sink.state()
    if settings.sinks:
        write_json(out / STATE_NAME, state)
    return Trackers(out, sinks, settings, warn)


def attach_files(run_dir: Path, files: Iterable[Path], warn: Callable[[str], None] = print) -> None:
    """Files a finished run gets later (``pfedlora report RUN_DIR``'s figures) to its tracked run: MLflow
    artifacts, TensorBoard images at the last round. No-op for an untracked or unfinished run."""
    run_dir = Path(run_dir)
    saved = saved_state(run_dir)
    files = [Path(f) for f in files if Path(f).is_file()]
    if not saved or not files or not (run_dir / "summary.json").is_file():
        return
    settings = TrackingConfig.model_validate(saved.get("settings", {}))
    try:
        step = int(json.loads((run_dir / "summary.json").read_text()).get("rounds", 0))
    except (OSError, ValueError, TypeError):
        step = 0
    for name in settings.sinks:
        try:
            if name == "mlflow" and saved.get("mlflow"):
                sink: Any = MlflowSink(settings, {}, "", saved["mlflow"])
                sink.log_files(files, step)
                sink.close("FINISHED")
            elif name == "tensorboard":
                sink = TensorBoardSink(run_dir, None, 1)
                sink.log_files(files, step)
                sink.close("FINISHED")
        except Exception as exc:
            warn(f"warning: tracking: {name} did not take the report's figures ({_reason(exc)})")


# --- compare and sweep: one experiment, one parent run ------------------------------------------


def _parent_run(out: Path, settings: TrackingConfig, kind: str, experiment: str) -> MlflowSink:
    """The comparison's or sweep's MLflow parent run: the one ``OUT/tracking.json`` records (running the
    same command again continues it), else a new one."""
    saved = (saved_state(out) or {}).get("mlflow")
    parent = settings.model_copy(update={"experiment": experiment, "run_name": kind, "parent_run_id": None})
    return MlflowSink(parent, {"kind": kind, "out": str(out)}, kind, saved)


def group_planned_runs(planned: list[Any], out: Path, kind: str, warn: Callable[[str], None] = print) -> None:
    """Nest a comparison's or sweep's planned runs (``.config``, ``.label``) under one MLflow parent run
    in one experiment (``tracking.experiment``, else OUT's name); TensorBoard needs nothing: every run
    directory is its own folder. No-op when the runs track nothing."""
    if not planned or not planned[0].config.tracking.sinks:
        return
    out = Path(out)
    settings = planned[0].config.tracking
    experiment = settings.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or out.resolve().name
    parent_id = None
    if "mlflow" in settings.sinks:
        try:
            parent = _parent_run(out, settings, kind, experiment)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / STATE_NAME, {"settings": settings.model_dump(mode="json"), "mlflow": parent.state()})
            parent_id = parent.run_id
        except Exception as exc:
            warn(f"warning: tracking: mlflow could not start the {kind}'s parent run ({_reason(exc)}); its runs "
                 "are logged without it")
    for run in planned:
        name = re.sub(r"\[\d+/\d+\] ", "", run.label).strip()  # "[2/6] " counts runs, it names none
        run.config = run.config.model_copy(update={"tracking": settings.model_copy(update={
            "experiment": experiment, "run_name": name, "parent_run_id": parent_id})})


def finish_group(out: Path, files: Iterable[Path], warn: Callable[[str], None] = print) -> None:
    """The comparison's or sweep's tables and figures as its parent run's artifacts; the parent run
    marked finished. No-op without a parent run (``OUT/tracking.json``)."""
    saved = saved_state(Path(out))
    if not saved or not saved.get("mlflow"):
        return
    try:
        settings = TrackingConfig.model_validate(saved.get("settings", {}))
        parent = MlflowSink(settings, {}, "", saved["mlflow"])
        parent.log_files([Path(p) for p in files if Path(p).is_file()], 0)
        parent.close("FINISHED")
    except Exception as exc:
        warn(f"warning: tracking: mlflow failed on the parent run's artifacts ({_reason(exc)})")
