"""Issue 35, item 4: hostile data files are refused with one line, cheaply.

Each file is built here, a few kB on disk, and would cost gigabytes if read naively: a pickle whose
lists share one sub-list at every level (a nesting bomb, in a client .npz and in a CIFAR python
batch), a .tar.gz whose sentence file declares 256 MiB of zeros, and one with 20,000 empty headers.
Memory is measured with tracemalloc (numpy's and Python's allocations), not timed.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pfedlora.data import text as text_module
from pfedlora.data.cache import MAX_PICKLE_DEPTH, MAX_PICKLE_ELEMENTS, NumpyOnlyUnpickler, check_unpickled_size
from pfedlora.data.client_data import read_client_npz
from pfedlora.errors import UserError

MEMORY_BOUND = 300 * 2**20  # "a few hundred MB" at most (issue 35); the refusals below take far less


def _binary_bomb(depth: int) -> list:
    """A list tree of depth ``depth`` where every level holds the level below twice: 2^depth leaves
    reached through shared references, a few bytes per level once pickled."""
    level: list = [0]
    for _ in range(depth):
        level = [level, level]
    return level


def _wide_bomb() -> list:
    """Depth 5, 64 references per level: 64^5 (a billion) elements, within the depth bound."""
    level: list = [0] * 64
    for _ in range(4):
        level = [level] * 64
    return level


def _peak(call) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        call()
        error = None
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


def test_the_nesting_bomb_npz_is_refused_cheaply(tmp_path: Path) -> None:
    # the file: a 432-byte npz that expands to 8 million elements at depth 22
    path = tmp_path / "client-0.npz"
    np.savez(path, data=np.array({"x": _binary_bomb(22), "y": [0]}, dtype=object))
    assert path.stat().st_size < 4096
    error, peak = _peak(lambda: read_client_npz(path))
    assert isinstance(error, UserError), error
    assert "nested deeper than" in str(error) and "\n" not in str(error)
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB"


def test_a_wide_shared_reference_npz_is_refused_by_the_element_budget(tmp_path: Path) -> None:
    path = tmp_path / "client-0.npz"
    np.savez(path, data=np.array({"x": _wide_bomb(), "y": [0]}, dtype=object))
    assert path.stat().st_size < 8192
    error, peak = _peak(lambda: read_client_npz(path))
    assert isinstance(error, UserError), error
    assert f"more than {MAX_PICKLE_ELEMENTS:,} elements" in str(error)
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB"


def test_the_nesting_bomb_cifar_batch_is_refused(tmp_path: Path) -> None:
    from pfedlora.data.datasets import _unpickle

    blob = pickle.dumps({b"data": _binary_bomb(22), b"labels": [0]})
    assert len(blob) < 4096
    error, peak = _peak(lambda: _unpickle(blob, "cifar-10-batches-py/data_batch_1"))
    assert isinstance(error, UserError), error
    assert "not a valid CIFAR python batch" in str(error) and "nested deeper than" in str(error)
    assert peak < MEMORY_BOUND


def test_legitimate_pickles_pass_the_budget() -> None:
    # CIFAR-100's training batch: three lists of 50,000 and a data array, at depth 2
    batch = {b"data": np.zeros((50_000, 8), np.uint8), b"fine_labels": [1] * 50_000,
             b"coarse_labels": [1] * 50_000, b"filenames": [b"x.png"] * 50_000}
    loaded = NumpyOnlyUnpickler(__import__("io").BytesIO(pickle.dumps(batch)), encoding="bytes").load()
    assert len(loaded[b"fine_labels"]) == 50_000
    check_unpickled_size(_binary_bomb(MAX_PICKLE_DEPTH - 1))  # at the depth bound, few elements: accepted
    with pytest.raises(pickle.UnpicklingError):
        check_unpickled_size(_binary_bomb(MAX_PICKLE_DEPTH))
    recursive: list = []
    recursive.append(recursive)  # a list holding itself: an endless walk without the depth bound
    with pytest.raises(pickle.UnpicklingError):
        check_unpickled_size(recursive)


def _zeros_tar_gz(path: Path, member: str, size: int) -> None:
    """A .tar.gz whose ``member`` holds ``size`` zero bytes, written as concatenated gzip members
    (valid gzip) so the test never holds the inflated bytes: a few hundred kB on disk."""
    info = tarfile.TarInfo(member)
    info.size = size
    chunk = gzip.compress(bytes(16 << 20), compresslevel=1)
    with path.open("wb") as handle:
        handle.write(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(size // (16 << 20)):
            handle.write(chunk)
        handle.write(gzip.compress(bytes(2 * tarfile.BLOCKSIZE)))


def test_an_oversized_sentence_file_in_a_tar_is_refused_before_it_is_read(tmp_path: Path) -> None:
    archive = tmp_path / "trec.tar.gz"
    _zeros_tar_gz(archive, "trec/TREC.train.all", 256 << 20)
    assert archive.stat().st_size < 2 << 20
    error, peak = _peak(lambda: text_module._read_line_files("trec", archive))
    assert isinstance(error, UserError), error
    assert "268,435,456 bytes, over the 67,108,864-byte cap" in str(error) and "\n" not in str(error)
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB"  # nothing of the member was read


def test_an_archive_of_empty_headers_is_refused_after_the_member_bound(tmp_path: Path) -> None:
    archive = tmp_path / "sst2.tar.gz"
    info = tarfile.TarInfo("x")
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    count = text_module.MAX_ARCHIVE_MEMBERS * 2
    archive.write_bytes(gzip.compress(header * count + bytes(2 * tarfile.BLOCKSIZE)))
    with pytest.raises(UserError, match=f"more than {text_module.MAX_ARCHIVE_MEMBERS:,} archive members"):
        text_module._read_line_files("sst2", archive)


def test_an_oversized_sentence_file_in_a_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "trec"
    folder.mkdir()
    with (folder / "TREC.train.all").open("wb") as handle:
        handle.truncate(text_module.MAX_LINE_FILE_BYTES + 1)  # sparse: no disk used
    (folder / "TREC.test.all").write_text("0 a question\n")
    with pytest.raises(UserError, match="over the 67,108,864-byte cap"):
        text_module._read_line_files("trec", folder)
