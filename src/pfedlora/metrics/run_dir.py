"""The run directory: config.yaml, partition.json, metrics.csv, summary.json.

JSON and YAML files are written atomically (temp file + rename) so a crash never leaves a
half-written file; metrics.csv is appended and flushed row by row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pfedlora.errors import UserError


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    write_atomic(path, yaml.safe_dump(data, sort_keys=False))


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create ``path``; refuse a non-empty existing directory unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UserError(f"run directory {str(path)!r} is not empty; pass --overwrite or choose another --out")
        for name in ("metrics.csv", "summary.json", "partition.json", "config.yaml", "checkpoint.pt", "events.log",
                     "tracking.json"):
            (path / name).unlink(missing_ok=True)
        for events in path.glob("events.out.tfevents.*"):  # TensorBoard's (pfedlora.metrics.tracking)
            events.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


class MetricsWriter:
    """Appends one row per evaluated round to metrics.csv; columns fixed by the first row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fields: list[str] | None = None
        # called with every row written (the run's trackers, pfedlora.metrics.tracking): what they log
        # is exactly what metrics.csv holds
        self.on_row: Callable[[dict[str, Any]], None] | None = None

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file by ``rows`` (atomically): a resumed run drops rows after its checkpoint."""
        self._fields = None
        if not rows:
            self.path.unlink(missing_ok=True)
            return
        self._fields = list(rows[0])
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self._fields, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        write_atomic(self.path, buffer.getvalue())

    def write(self, row: dict[str, Any]) -> None:
        new_file = self._fields is None
        if new_file:
            self._fields = list(row)
        with self.path.open("a" if not new_file else "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._fields, extrasaction="raise")
            if new_file:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        if self.on_row is not None:
            self.on_row(row)


def _fmt(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    with Path(path).open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
