"""Finished runs as records: a run directory's summary.json and metrics.csv, read back for tables
and figures (``compare``, ``sweep``, ``report``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfedlora.errors import UserError


@dataclass
class RunRecord:
    """One finished run: its directory, summary.json and metrics.csv rows."""

    algorithm: str
    seed: int
    path: Path
    summary: dict[str, Any]
    history: list[dict[str, float]]


def load_run(path: str | Path) -> RunRecord:
    """Read a run directory; UserError if it is not a finished run."""
    import json

    from pfedlora.metrics.run_dir import read_metrics

    path = Path(path)
    summary_path, metrics_path = path / "summary.json", path / "metrics.csv"
    if not summary_path.is_file() or not metrics_path.is_file():
        raise UserError(f"{str(path)!r} is not a finished run directory (needs summary.json and metrics.csv)")
    try:
        summary = json.loads(summary_path.read_text())
        history = read_metrics(metrics_path)
    except (ValueError, OSError) as exc:
        raise UserError(f"run directory {str(path)!r} has an unreadable summary.json or metrics.csv ({exc})") from None
    if not history:
        raise UserError(f"run directory {str(path)!r} has an empty metrics.csv")
    return RunRecord(str(summary.get("algorithm", path.name)), int(summary.get("seed", 0)), path, summary, history)


def human(value: float | None, unit: str) -> str:
    """``1.23 GFLOP``, ``54.8 kB``: SI prefixes."""
    if value is None:
        return "–"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"
