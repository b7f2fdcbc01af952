"""Tables of examples: ``dataset.name: table`` (CSV or Parquet files) and the rows of Hugging Face
datasets (:mod:`pfedlora.data.hf`), as an ArrayDataset.

``dataset.path`` for ``table``: one ``.csv`` / ``.parquet`` file, or a directory holding
``train.{csv,parquet}`` and optionally ``test.{csv,parquet}``. Columns (config keys):

* ``label_column`` (default ``label``): the class; class ids follow the sorted label values
  (numerically when all are integers);
* ``image_column``: image paths, relative to the table's folder and inside it (``..``, absolute
  paths, ``~`` and symlinks that lead out of it are refused unless ``dataset.allow_outside_paths``):
  an image dataset
  (sizes and modes as :mod:`pfedlora.data.images`); otherwise ``text_column`` (default ``text``):
  a text dataset tokenized as :mod:`pfedlora.data.text`;
* ``client_column`` (with ``partition.kind: given``): the client of each row; clients are its
  values, sorted numerically when all are integers, else as strings. Test rows must name clients
  that have training rows; a client without test rows gets an empty test split.

Without a test table, a seeded ``dataset.test_fraction`` of each class (of each client's rows, with
``client_column``) is held out for test. Parquet needs ``pyarrow`` (``pip install "pfedlora[hf]"``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfedlora.data.arrays import ArrayDataset
from pfedlora.data.cache import one_line
from pfedlora.data.client_data import client_order, given_clients
from pfedlora.data.image_folder import split_per_class
from pfedlora.data.images import channels_of, decode_images, image_dataset, native_size
from pfedlora.data.text import TextSpec, check_columns, load_tokenizer, tokenize
from pfedlora.errors import UserError

TABLE_HELP = ("accepted: a .csv or .parquet file, or a directory with train.{csv,parquet} (and optionally "
              "test.{csv,parquet}); columns named by dataset.label_column and dataset.text_column or "
              "dataset.image_column (and dataset.client_column for partition.kind given)")
TABLE_SUFFIXES = (".csv", ".parquet")


@dataclass
class Rows:
    """One split of a table: its columns in order and their values (lists of equal length)."""

    where: str
    columns: list[str]
    values: dict[str, list[Any]]
    # image values that are paths are relative to this folder
    base: Path | None = None

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def take(self, index: np.ndarray) -> Rows:
        return Rows(self.where, self.columns, {c: [v[i] for i in index] for c, v in self.values.items()}, self.base)


# --------------------------------------------------------------------------- reading tables


def read_table(path: Path) -> Rows:
    if path.suffix == ".parquet":
        return _read_parquet(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read as UTF-8 CSV ({one_line(exc)}); {TABLE_HELP}") from None
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if not header:
            raise UserError(f"{path}: empty CSV (no header row); {TABLE_HELP}")
        rows = list(reader)
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV ({one_line(exc)})") from None
    values: dict[str, list[Any]] = {c: [] for c in header}
    for number, row in enumerate(rows, 2):
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(f"{path}:{number}: {len(row)} fields but the header has {len(header)}")
        for column, value in zip(header, row):
            values[column].append(value)
    return Rows(str(path), list(header), values, path.parent)


def _read_parquet(path: Path) -> Rows:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow; pip install \"pfedlora[hf]\"") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({one_line(exc)}); {TABLE_HELP}") from None
    return Rows(str(path), list(table.column_names), table.to_pydict(), path.parent)


def _table_files(source: Path) -> tuple[Path, Path | None]:
    if source.is_file():
        if source.suffix not in TABLE_SUFFIXES:
            raise UserError(f"dataset.path {source} is not a .csv or .parquet file; {TABLE_HELP}")
        return source, None
    if not source.is_dir():
        raise UserError(f"dataset.path {source} does not exist; {TABLE_HELP}")
    found = {split: [source / f"{split}{suffix}" for suffix in TABLE_SUFFIXES if (source / f"{split}{suffix}").is_file()]
             for split in ("train", "test")}
    if not found["train"]:
        raise UserError(f"{source}: no train.csv or train.parquet; {TABLE_HELP}")
    return found["train"][0], (found["test"][0] if found["test"] else None)


# --------------------------------------------------------------------------- rows -> dataset


def _label_names(values: list[Any]) -> list[str]:
    names = {str(v).strip() for v in values}
    return sorted(names, key=lambda s: (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s))


def _missing_values(rows: Rows, column: str) -> None:
    for number, value in enumerate(rows.values[column]):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise UserError(f"{rows.where}: row {number + 1} has no {column!r} value")


def _held_out(train: Rows, options: Any, seed: int, client_column: str | None) -> tuple[Rows, Rows]:
    """Split ``train`` into (train, test) by a seeded per-class (per-client) test_fraction."""
    labels = np.array([str(v).strip() for v in train.values[options.label_column]])
    _, label_ids = np.unique(labels, return_inverse=True)
    test = np.zeros(len(labels), dtype=bool)
    groups = ([str(v) for v in train.values[client_column]] if client_column else ["all"] * len(labels))
    for group in sorted(set(groups)):
        members = np.flatnonzero(np.array(groups) == group)
        rng = np.random.default_rng([seed, 19, *group.encode()])
        test[members[split_per_class(label_ids[members], options.test_fraction, rng)]] = True
    return train.take(np.flatnonzero(~test)), train.take(np.flatnonzero(test))


def rows_dataset(name: str, train: Rows, test: Rows | None, options: Any, *, seed: int, tokenizer: str,
                 max_length: int, image_column: str | None, text_column: str | None,
                 label_names: list[str] | None = None, source: str = "") -> ArrayDataset:
    """An ArrayDataset from table rows (``clients`` set when ``options.client_column`` is)."""
    client_column = options.client_column
    input_column = image_column or text_column
    for rows in (train, test):
        if rows is not None:
            wanted = {"dataset.label_column": options.label_column,
                      "dataset.image_column" if image_column else "dataset.text_column": input_column,
                      "dataset.client_column": client_column}
            check_columns(rows.where, rows.columns, wanted)
            for column in (c for c in wanted.values() if c is not None):
                _missing_values(rows, column)
    if test is None:
        train, test = _held_out(train, options, seed, client_column)
    if len(train) == 0:
        raise UserError(f"{train.where}: no rows")
    class_names = label_names or _label_names(train.values[options.label_column])
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({str(v).strip() for v in test.values[options.label_column]} - set(index))
    if unknown:
        raise UserError(f"{test.where}: labels {unknown[:5]} do not occur in the training rows; test classes must be "
                        "a subset of train classes")
    names: list[str] | None = None
    if client_column is not None:  # client order: group rows client by client (stable within a client)
        names = client_order(sorted({str(v) for v in train.values[client_column]}))
        strangers = sorted({str(v) for v in test.values[client_column]} - set(names))
        if strangers:
            raise UserError(f"{test.where}: clients {strangers[:5]} in {client_column!r} have no training rows")
        position = {n: i for i, n in enumerate(names)}
        train = train.take(np.argsort([position[str(v)] for v in train.values[client_column]], kind="stable"))
        test = test.take(np.argsort([position[str(v)] for v in test.values[client_column]], kind="stable"))
    ys = [np.array([index[str(v).strip()] for v in rows.values[options.label_column]], dtype=np.int64)
          for rows in (train, test)]
    if image_column is not None:
        outside = bool(getattr(options, "allow_outside_paths", False))
        items = [[(f"{rows.where}: {image_column}[{i}]",
                   _image_source(v, rows.base, outside, f"{rows.where}: {image_column}[{i}]"))
                  for i, v in enumerate(rows.values[image_column])] for rows in (train, test)]
        channels = channels_of(items[0] + items[1])
        native = None if options.image_size is not None else native_size(items[0])
        xs = [decode_images(it, channels=channels, image_size=options.image_size, fit=options.image_fit,
                            native=native, label=f"{rows.where} ({image_column})") for it, rows in zip(items, (train, test))]
        dataset = image_dataset(name, xs[0], ys[0], xs[1], ys[1], class_names, fit=options.image_fit)
    else:
        tok = load_tokenizer(tokenizer)
        xs = [tokenize([str(v) for v in rows.values[text_column]], tok, max_length) for rows in (train, test)]
        dataset = ArrayDataset(
            name=name, train_x=torch.from_numpy(xs[0].astype(np.int64)), train_y=torch.from_numpy(ys[0]),
            test_x=torch.from_numpy(xs[1].astype(np.int64)), test_y=torch.from_numpy(ys[1]),
            num_classes=len(class_names), class_names=class_names,
            text=TextSpec(vocab_size=int(len(tok)), max_length=max_length, pad_id=int(tok.pad_token_id or 0)),
            preprocessing={"kind": "text", "tokenizer": tokenizer, "max_length": max_length})
    if names is not None:
        sizes = [[sum(1 for v in rows.values[client_column] if str(v) == n) for n in names] for rows in (train, test)]
        dataset.clients = given_clients(source or train.where, names, sizes[0], sizes[1])
    return dataset


def _image_source(value: Any, base: Path | None, allow_outside: bool = False, where: str = "image") -> Any:
    if isinstance(value, dict):  # Hugging Face's undecoded Image: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, str):
        return _image_path(value, base, allow_outside, where)
    return value  # a Pillow image or encoded bytes


def _image_path(value: str, base: Path | None, allow_outside: bool, where: str) -> Path:
    """An image path from the data, resolved under the dataset's folder ``base``. A table or dataset
    comes from elsewhere (a download, a colleague): its paths must not make a run read, and put into
    the training set, any file the user can read (``../../.ssh/id_rsa``, ``/etc/shadow``, ``~/x``,
    a symlink out). ``dataset.allow_outside_paths: true`` restores any path (``~`` expanded)."""
    if allow_outside:
        path = Path(value).expanduser()
        return path if path.is_absolute() or base is None else base / path
    if base is None:
        raise UserError(f"{where}: image path {value!r} but the data has no folder to resolve it under (a hub "
                        "dataset); accepted: embedded image bytes, or dataset.allow_outside_paths: true")
    root = base.resolve()
    path = (root / value).resolve()  # an absolute value replaces root here, and is refused below
    if not path.is_relative_to(root):
        raise UserError(f"{where}: image path {value!r} resolves outside the dataset folder {root}; accepted: "
                        "paths inside it (set dataset.allow_outside_paths: true to allow others)")
    return path


def load_table(path: str | None, options: Any, *, seed: int, tokenizer: str, max_length: int) -> ArrayDataset:
    if path is None or str(path).strip() == "":
        raise UserError(f"dataset.path is required for table; {TABLE_HELP}")
    source = Path(path).expanduser()
    train_file, test_file = _table_files(source)
    train = read_table(train_file)
    test = read_table(test_file) if test_file is not None else None
    image_column = options.image_column
    return rows_dataset("table", train, test, options, seed=seed, tokenizer=tokenizer, max_length=max_length,
                        image_column=image_column, text_column=None if image_column else options.text_column,
                        source=str(source))
