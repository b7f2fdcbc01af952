"""``dataset.name: hf``: Hugging Face datasets (the optional extra: ``pip install "pfedlora[hf]"``).

``dataset.path`` is, in this order:

* a local directory written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``);
* a local ``.parquet`` file, or a directory of them: files whose names start with
  ``dataset.split_train`` / ``split_test`` (e.g. ``train-00000-of-00001.parquet``) are those splits,
  otherwise all files are the training split;
* a hub id (``uoft-cs/cifar100``), fetched only with ``dataset.download: true``.

Splits: ``dataset.split_train`` (default ``train``) and ``split_test`` (default ``test``); when the
test split is null or absent, a seeded ``dataset.test_fraction`` of each class (of each client) is
held out. Columns: an ``Image`` feature (or ``dataset.image_column``) makes an image dataset,
otherwise ``dataset.text_column`` (or the only string column) a text dataset;
``dataset.label_column`` is the class (a ``ClassLabel`` keeps its names and order); with
``partition.kind: given``, ``dataset.client_column`` names each row's client (e.g. FEMNIST's writer
id). Rows become arrays as in :mod:`pfedlora.data.table`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pfedlora.data.cache import one_line
from pfedlora.data.table import Rows, rows_dataset
from pfedlora.errors import UserError

HF_HELP = ("accepted dataset.path: a save_to_disk directory, a .parquet file or a directory of them, or a hub id "
           "with dataset.download: true")


def _datasets_module():
    try:
        import datasets
    except ImportError:
        raise UserError("dataset.name hf needs the Hugging Face datasets library; pip install \"pfedlora[hf]\"") from None
    return datasets


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars from the datasets library while pfedlora reads (the run has its own)."""
    was_enabled = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.utils.enable_progress_bars()


def _open(path: str, options: Any, download: bool, cache_dir: str | None) -> dict[str, Any]:
    """``{split name: datasets.Dataset}``."""
    datasets = _datasets_module()
    with _quiet(datasets):
        return _open_quietly(datasets, path, options, download, cache_dir)


def _open_quietly(datasets: Any, path: str, options: Any, download: bool, cache_dir: str | None) -> dict[str, Any]:
    local = Path(path).expanduser()
    try:
        if local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(local))
            return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {options.split_train: loaded}
        parquet = [local] if local.is_file() and local.suffix == ".parquet" else \
            sorted(local.rglob("*.parquet")) if local.is_dir() else []
        if parquet:
            files: dict[str, list[str]] = {}
            for f in parquet:
                split = next((s for s in (options.split_train, options.split_test) if s and f.name.startswith(s)), None)
                files.setdefault(split or "", []).append(str(f))
            if set(files) != {""} and options.split_train not in files:
                raise UserError(f"{local}: Parquet files for {', '.join(sorted(k for k in files if k))} but none "
                                f"named {options.split_train}*; set dataset.split_train")
            data_files = {(k or options.split_train): v for k, v in files.items()}
            return dict(datasets.load_dataset("parquet", data_files=data_files, cache_dir=cache_dir,
                                                       trust_remote_code=False))
        if local.exists():
            raise UserError(f"dataset.path {local} holds neither a save_to_disk dataset nor Parquet files; {HF_HELP}")
        if not download:
            raise UserError(f"dataset.path {path!r} is not a local dataset; a Hugging Face hub id is fetched only with "
                            f"dataset.download: true; {HF_HELP}")
        # never a dataset's own loading script (datasets >= 4 has none; explicit for any version)
        return dict(datasets.load_dataset(path, cache_dir=cache_dir, trust_remote_code=False))
    except UserError:
        raise
    except Exception as exc:  # the datasets library raises many types for bad or missing data
        raise UserError(f"dataset.path {path!r}: cannot load it with datasets ({one_line(exc)}); {HF_HELP}") from None


def _feature_kind(feature: Any) -> str:
    datasets = _datasets_module()
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.ClassLabel):
        return "class"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "string"
    return "other"


def load_hf(path: str | None, options: Any, *, cache_dir: str | None, download: bool, seed: int, tokenizer: str,
            max_length: int):
    if path is None or str(path).strip() == "":
        raise UserError(f"dataset.path is required for hf; {HF_HELP}")
    splits = _open(str(path), options, download, cache_dir)
    # image paths (undecoded images without bytes) resolve under the local dataset's folder; a hub
    # dataset has none, so only its embedded bytes are read
    local = Path(str(path)).expanduser()
    root = local if local.is_dir() else local.parent if local.is_file() else None
    if options.split_train not in splits:
        raise UserError(f"dataset.path {path}: no split {options.split_train!r} (dataset.split_train); its splits are "
                        f"{', '.join(splits)}")
    train_set = splits[options.split_train]
    test_set = splits.get(options.split_test) if options.split_test else None
    features = train_set.features
    kinds = {name: _feature_kind(feature) for name, feature in features.items()}
    columns = list(features)
    used = {options.label_column, options.client_column}
    image_column = options.image_column or next((c for c, k in kinds.items() if k == "image"), None)
    text_column = None
    if image_column is None:
        strings = [c for c, k in kinds.items() if k == "string" and c not in used]
        text_column = options.text_column if options.text_column in columns else (strings[0] if len(strings) == 1 else None)
        if text_column is None:
            raise UserError(f"dataset.path {path}: no image column and no text column {options.text_column!r} "
                            f"(dataset.text_column); its columns are {', '.join(columns)}; set dataset.text_column or "
                            "dataset.image_column")
    label_names = None
    label_feature = features.get(options.label_column)
    if label_feature is not None and kinds[options.label_column] == "class":
        label_names = list(label_feature.names)

    def rows(dataset: Any, split: str) -> Rows:
        wanted = [c for c in (options.label_column, image_column or text_column, options.client_column)
                  if c is not None and c in dataset.column_names]
        if image_column is not None and image_column in dataset.column_names:
            dataset = dataset.cast_column(image_column, _datasets_module().Image(decode=False))
        values = dataset.select_columns(wanted).to_dict()
        if label_names is not None and options.label_column in values:
            values[options.label_column] = [label_names[int(v)] for v in values[options.label_column]]
        return Rows(f"{path}[{split}]", list(dataset.column_names), values, root)

    with _quiet(_datasets_module()):
        train_rows = rows(train_set, options.split_train)
        test_rows = rows(test_set, options.split_test) if test_set is not None else None
    return rows_dataset("hf", train_rows, test_rows, options, seed=seed,
                        tokenizer=tokenizer, max_length=max_length, image_column=image_column, text_column=text_column,
                        label_names=label_names, source=str(path))
