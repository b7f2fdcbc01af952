"""On-disk caches of decoded datasets, shared by every loader: fingerprints, atomic writes, arrays.

A cache entry is a folder of ``.npy`` arrays plus ``meta.json``, written last, so a folder without
``meta.json`` is never read. An unreadable or inconsistent entry is rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pfedlora.errors import UserError

log = logging.getLogger(__name__)


def memory_cap_bytes() -> int:
    """The most bytes one array or file member of data we read may take: half the memory available now
    (4 GiB where the platform does not say), so a deflate bomb (gigabytes of zeros in a few MB) or a
    header declaring a huge shape is refused before anything is inflated or allocated."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30
    return max(1 << 20, available // 2)


def refuse_oversized(size: int, what: str, where: str) -> None:
    cap = memory_cap_bytes()
    if size > cap:
        raise UserError(f"{where}: {what} is {size:,} bytes, over the cap of {cap:,} bytes (half the available "
                        f"memory); accepted: arrays up to that size")


def load_npy(path: Path) -> np.ndarray:
    """``np.load(path, allow_pickle=False)`` that first checks the header: the bytes its shape and dtype
    declare must be what the file holds and within :func:`memory_cap_bytes`. np.load allocates what the
    header declares before reading, so a damaged or planted cache file could otherwise claim terabytes."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        if dtype.hasobject:
            raise ValueError(f"{path.name}: object array (not written by this cache)")
        declared = math.prod(shape) * dtype.itemsize
        held = os.fstat(handle.fileno()).st_size - handle.tell()
        if declared != held:
            raise ValueError(f"{path.name}: header declares {declared:,} bytes of data, the file holds {held:,}")
        refuse_oversized(declared, f"array of shape {list(shape)}", str(path))
        array = np.fromfile(handle, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 300 characters (for UserError messages)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def default_cache_dir() -> Path:
    env = os.environ.get("PFEDLORA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pfedlora"


def file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def tree_fingerprint(root: Path) -> str:
    count = total = newest = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            count, total, newest = count + 1, total + st.st_size, max(newest, st.st_mtime_ns)
    return f"dir:{root.resolve()}:{count}:{total}:{newest}"


def path_fingerprint(path: Path) -> str:
    return file_fingerprint(path) if path.is_file() else tree_fingerprint(path)


def atomic_write(target: Path, write: Callable[[Any], Any]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def cached_arrays(
    kind: str,
    key: str,
    cache_dir: str | os.PathLike[str] | None,
    build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``build()``'s (arrays, meta), read from the cache entry for ``key`` when there is a good one.

    ``key`` must capture everything the arrays depend on (source fingerprint, options, version).
    Arrays must not be object arrays (they are stored with ``allow_pickle=False``).
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = base / kind / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("_key") == key:
            arrays = {name: load_npy(entry / f"{name}.npy") for name in meta["_arrays"]}
            meta = {k: v for k, v in meta.items() if not k.startswith("_")}
            return arrays, meta
    except FileNotFoundError:
        pass
    except Exception as exc:  # an unreadable cache is rebuilt
        log.warning("ignoring unreadable dataset cache %s: %s", entry, one_line(exc))
    arrays, meta = build()
    try:
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "meta.json").unlink(missing_ok=True)  # meta.json marks a complete entry: written last
        for name, array in arrays.items():
            atomic_write(entry / f"{name}.npy", lambda fh, a=array: np.save(fh, a, allow_pickle=False))
        document = {**meta, "_key": key, "_arrays": sorted(arrays)}
        atomic_write(entry / "meta.json", lambda fh: fh.write(json.dumps(document).encode()))
    except OSError as exc:  # a cache we cannot write only costs speed
        log.warning("could not write dataset cache %s: %s", entry, one_line(exc))
    return arrays, meta


# What one unpickled object may hold, counted as the reader will walk it (a list that references one
# sub-list k times counts k times): a few bytes of pickle can otherwise describe a nesting of shared
# references that np.asarray or a loop expands to billions of elements (a 432-byte npz: 8 million
# elements at depth 22). CIFAR-100's training batch, the largest legitimate pickle read here, holds about
# 150,000 elements (three lists of 50,000) at depth 2.
MAX_PICKLE_DEPTH = 8
MAX_PICKLE_ELEMENTS = 1 << 22


def check_unpickled_size(value: Any, max_depth: int = MAX_PICKLE_DEPTH,
                         max_elements: int = MAX_PICKLE_ELEMENTS) -> None:
    """Raise pickle.UnpicklingError when ``value`` nests deeper than ``max_depth`` containers or holds
    more than ``max_elements`` items in all (shared references counted every time they occur). Stops
    as soon as a bound is passed, so the check itself costs at most ``max_elements`` steps."""
    count = 0
    stack = [iter((value,))]  # one iterator per open container: memory bounded by the depth
    while stack:
        item = next(stack[-1], _DONE)
        if item is _DONE:
            stack.pop()
            continue
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            children = item.reshape(-1)
        else:
            continue
        if len(stack) > max_depth:
            raise pickle.UnpicklingError(f"containers nested deeper than {max_depth} levels; accepted: numpy arrays "
                                         f"in dicts and lists at most {max_depth} deep")
        count += len(children) * (2 if isinstance(item, dict) else 1)
        if count > max_elements:
            raise pickle.UnpicklingError(f"more than {max_elements:,} elements in nested containers (shared "
                                         f"references counted each time); accepted: at most {max_elements:,}")
        stack.append(iter(children) if not isinstance(item, dict) else (v for pair in children for v in pair))


_DONE = object()


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Reads pickled numpy arrays (CIFAR's official batches, PFLlib's npz ``data`` entries) and
    nothing else: any other global is refused, so no code from the file ever runs, and the result
    must pass :func:`check_unpickled_size` (no nesting bombs of shared references)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name} (only numpy arrays are read)")

    def load(self) -> Any:
        value = super().load()
        check_unpickled_size(value)
        return value
