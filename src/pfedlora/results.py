"""Results as data: runs, comparisons and sweeps as pandas data frames.

```python
import pfedlora.results

rounds = pfedlora.results.load("runs/compare")    # one row per run x evaluated round
runs = pfedlora.results.summary("runs/compare")   # one row per finished run, paired statistics
```

Both take a run directory, a ``compare`` output or a ``sweep`` output (any folder holding run
directories, found at any depth). Every row names its run (``run``: the run directory relative to
``path``), its ``setting`` (the folder holding the run's ``<algorithm>/seed<seed>``: a sweep's grid
point, ``""`` for a comparison), ``algorithm`` and ``seed``, then the config keys that differ between
the runs (the swept keys, dotted: ``adapter.rank``), then the data.

:func:`summary` pairs every algorithm with a reference algorithm seed by seed within each setting,
as ``pfedlora compare`` does (:func:`pfedlora.experiments.stats.paired_difference`): the same
``final_diff_*`` and ``best_diff_*`` columns as ``comparison.csv`` and ``sweep.csv``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pfedlora.errors import UserError
from pfedlora.experiments.compare import PAIRED_FIELDS, choose_reference, paired_columns
from pfedlora.experiments.stats import paired_difference

if TYPE_CHECKING:  # pandas is imported when a frame is built
    import pandas

__all__ = ["load", "summary"]

# identity columns first, in this order
ID_COLUMNS = ["run", "setting", "algorithm", "seed"]
# summary.json values that are one number per run, in this order (those a run has)
SUMMARY_COLUMNS = ["final_accuracy", "final_std", "best_accuracy", "best_round", "rounds", "num_clients",
                   "wall_seconds", "total_up_bytes", "total_down_bytes", "total_train_flops", "total_eval_flops",
                   "total_server_flops", "client_rounds", "up_bytes_per_client_round", "down_bytes_per_client_round",
                   "train_flops_per_client_round", "server_flops_per_round", "clients_ever_selected",
                   "selected_clients_final_accuracy", "adapter_parameters", "epsilon", "delta"]
# (column prefix, summary.json key) of the paired differences against the reference
PAIRED = (("final_diff", "final_accuracy"), ("best_diff", "best_accuracy"))


def _run_dirs(root: Path) -> Iterator[Path]:
    """Every run directory (config.yaml and metrics.csv) under ``root``, itself included, sorted."""
    if (root / "config.yaml").is_file() and (root / "metrics.csv").is_file():
        yield root
        return
    for config in sorted(root.rglob("config.yaml")):
        if (config.parent / "metrics.csv").is_file():
            yield config.parent


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class _Run:
    """One run directory read back: config (flattened), metrics.csv rows, summary.json (None when the
    run has not finished)."""

    def __init__(self, root: Path, path: Path) -> None:
        self.path = path
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
            with (path / "metrics.csv").open(newline="") as handle:
                self.rows = [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]
            summary_path = path / "summary.json"
            self.summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise UserError(f"run directory {str(path)!r} has an unreadable config.yaml, metrics.csv or "
                            f"summary.json ({exc})") from None
        if not isinstance(config, dict):
            raise UserError(f"run directory {str(path)!r}: config.yaml is not a mapping of keys")
        self.config = _flatten(config)
        relative = path.relative_to(root)
        self.run = relative.as_posix() if relative.parts else "."
        # compare and sweep write OUT[/<point>]/<algorithm>/seed<seed>: the setting is what holds those two
        self.setting = relative.parent.parent.as_posix() if len(relative.parts) >= 2 else ""
        if self.setting == ".":
            self.setting = ""
        self.algorithm = str(self.config.get("algorithm"))
        self.seed = int(self.config.get("seed", 0))


def _read(path: str | Path) -> tuple[list[_Run], list[str]]:
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"results: {str(root)!r} is not a directory (expected a run, compare or sweep directory)")
    runs = [_Run(root, run_dir) for run_dir in _run_dirs(root)]
    if not runs:
        raise UserError(f"results: no run directory (config.yaml and metrics.csv) under {str(root)!r}")
    return runs, swept_keys(runs)


def swept_keys(runs: list[_Run]) -> list[str]:
    """The config keys every run has and whose value differs between runs (algorithm and seed are
    columns of their own), in config order."""
    shared = [key for key in runs[0].config if all(key in run.config for run in runs[1:])]
    return [key for key in shared if key not in ("algorithm", "seed")
            and len({json.dumps(run.config[key]) for run in runs}) > 1]


def _frame(records: list[dict[str, Any]], leading: list[str]) -> pandas.DataFrame:
    import pandas

    frame = pandas.DataFrame.from_records(records)
    rest = [column for column in frame.columns if column not in leading]
    return frame[[*leading, *rest]]


def load(path: str | Path) -> pandas.DataFrame:
    """Every evaluated round of every run under ``path`` as a data frame.

    Args:
        path: a run directory, or a ``pfedlora compare`` / ``pfedlora sweep`` output directory (any
            folder whose subfolders hold run directories).

    Returns:
        One row per run and evaluated round: ``run``, ``setting``, ``algorithm``, ``seed``, the swept
        config keys (those whose values differ between the runs), then every metrics.csv column
        (``round``, ``mean_acc``, ``std_acc``, bytes, FLOPs, ...; empty where a run does not report one).
        Unfinished runs are included with the rounds they have.

    Raises:
        pfedlora.errors.UserError: ``path`` holds no run directory, or a file in one is unreadable.
    """
    runs, keys = _read(path)
    records = []
    for run in runs:
        identity = {"run": run.run, "setting": run.setting, "algorithm": run.algorithm, "seed": run.seed,
                    **{key: run.config[key] for key in keys}}
        records += [{**identity, **row} for row in run.rows]
    return _frame(records, [*ID_COLUMNS, *keys, "round"])


def summary(path: str | Path, reference: str | None = None) -> pandas.DataFrame:
    """One row per finished run, with the paired statistics ``pfedlora compare`` reports.

    Args:
        path: a run, compare or sweep directory (as for :func:`load`).
        reference: the algorithm every other one is paired with, seed by seed, within each setting;
            default ``standalone`` where it ran, else the first algorithm (``compare --reference``).

    Returns:
        ``run``, ``setting``, ``algorithm``, ``seed``, the swept keys, summary.json's numbers
        (``final_accuracy``, ``best_accuracy``, bytes, FLOPs, ...), ``reference``, this run's own
        differences ``final_diff`` / ``best_diff`` (its value − the reference's on the same seed, in
        points), and its algorithm's paired statistics in that setting: ``final_diff_mean``,
        ``_ci_low``, ``_ci_high`` (Student t 95%), ``_bootstrap_low``, ``_bootstrap_high`` (from 5
        seeds), ``_n`` and ``_excludes_zero`` (a gain or a loss only when True), the same for
        ``best_diff``. Empty for the reference's own runs.

    Raises:
        pfedlora.errors.UserError: no finished run under ``path``, or ``reference`` did not run.
    """
    runs, keys = _read(path)
    finished = [run for run in runs if run.summary is not None]
    if not finished:
        raise UserError(f"results: no finished run (summary.json) under {str(path)!r}")
    settings: dict[str, list[_Run]] = {}
    for run in finished:
        settings.setdefault(run.setting, []).append(run)
    records = []
    for setting_runs in settings.values():
        algorithms = list(dict.fromkeys(run.algorithm for run in setting_runs))
        paired_with = choose_reference(algorithms, reference if reference in algorithms or len(settings) == 1
                                       else None)
        baseline = {prefix: {run.seed: run.summary[key] for run in setting_runs
                             if run.algorithm == paired_with and run.summary.get(key) is not None}
                    for prefix, key in PAIRED}
        statistics: dict[str, dict[str, Any]] = {}
        for algorithm in algorithms:
            columns: dict[str, Any] = {}
            for prefix, key in PAIRED:
                ours = {run.seed: run.summary[key] for run in setting_runs
                        if run.algorithm == algorithm and run.summary.get(key) is not None}
                difference = None
                if algorithm != paired_with and set(ours) & set(baseline[prefix]):
                    difference = paired_difference(baseline[prefix], ours)
                columns |= paired_columns(prefix, difference)
            statistics[algorithm] = columns
        for run in setting_runs:
            own = {prefix: (run.summary[key] - baseline[prefix][run.seed]
                            if run.algorithm != paired_with and run.seed in baseline[prefix]
                            and run.summary.get(key) is not None else None)
                   for prefix, key in PAIRED}
            records.append({"run": run.run, "setting": run.setting, "algorithm": run.algorithm, "seed": run.seed,
                            **{key: run.config[key] for key in keys},
                            **{key: run.summary[key] for key in SUMMARY_COLUMNS if key in run.summary},
                            "reference": paired_with, **own, **statistics[run.algorithm]})
    frame = _frame(records, [*ID_COLUMNS, *keys])
    paired = [f"{prefix}_{field}" for prefix, _ in PAIRED for field in PAIRED_FIELDS]
    return frame[[c for c in frame.columns if c not in paired] + [c for c in paired if c in frame.columns]]
