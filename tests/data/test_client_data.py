"""Pre-partitioned client data: client_npz (PFLlib layout) and client_folders, partition.kind given."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from byod_files import write_client_folders, write_client_npz
from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.data import load_dataset
from pfedlora.data.client_data import client_order, given_splits, read_client_npz
from pfedlora.errors import UserError
from pfedlora.federation.simulation import Federation


def _config(path: Path, name: str = "client_npz", **overrides):
    return build_config({"dataset": {"name": name, "path": str(path), "cache_dir": str(path.parent / "cache")},
                         "partition": {"kind": "given"}, "model_pool": ["cnn5"], "rounds": 1,
                         "train": {"batch_size": 16}, **overrides})


def _one_line_exit_2(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pfedlora: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_client_order_is_numeric_when_every_name_is_an_integer() -> None:
    assert client_order(["10", "2", "0", "1"]) == ["0", "1", "2", "10"]
    assert client_order(["b", "a10", "a2"]) == ["a10", "a2", "b"]


def test_client_npz_loads_pfllib_files_as_given_clients(tmp_path: Path) -> None:
    root = write_client_npz(tmp_path / "npz", clients=12, per_client=8)
    dataset = load_dataset("client_npz", root, options=_config(root, num_clients=12).dataset)
    assert dataset.input_shape == (1, 28, 28) and dataset.num_classes == 10
    assert dataset.clients.names == [str(k) for k in range(12)]  # 10 and 11 after 9, not after 1
    splits = given_splits(dataset, 12)
    for k, split in enumerate(splits):  # client k's samples are exactly its files' samples, unchanged
        x, y = read_client_npz(root / "train" / f"{k}.npz")
        assert torch.equal(dataset.train_x[split.train_idx], torch.from_numpy(x))
        assert torch.equal(dataset.train_y[split.train_idx], torch.from_numpy(y))
        tx, _ = read_client_npz(root / "test" / f"{k}.npz")
        assert torch.equal(dataset.test_x[split.test_idx], torch.from_numpy(tx))


def test_plain_x_y_npz_and_num_classes_without_config_json(tmp_path: Path) -> None:
    root = write_client_npz(tmp_path / "npz", clients=2, plain=True, num_classes=None)
    dataset = load_dataset("client_npz", root, options=_config(root, num_clients=2).dataset)
    top = int(max(dataset.train_y.max(), dataset.test_y.max())) + 1
    assert dataset.num_classes == top and len(dataset.clients.names) == 2


def test_token_ids_become_a_text_dataset(tmp_path: Path) -> None:
    root = tmp_path / "npz"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for k in range(2):
            ids = rng.integers(1, 50, size=(5, 10)).astype(np.int64)
            np.savez_compressed(root / split / f"{k}.npz", data={"x": ids, "y": np.arange(5) % 3})
    dataset = load_dataset("client_npz", root, max_length=8, options=_config(root, num_clients=2).dataset)
    assert dataset.text is not None and dataset.train_x.shape == (10, 8) and dataset.text.vocab_size <= 50
    assert dataset.num_classes == 3


def _npz_with_pickle(path: Path, payload: bytes) -> None:
    """An .npz whose data.npy holds an object-array header followed by ``payload`` (a pickle)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.npy", header.getvalue() + payload)  # the header starts with the magic


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path, capsys) -> None:
    root = write_client_npz(tmp_path / "npz", clients=2)
    marker = tmp_path / "pwned"
    _npz_with_pickle(root / "train" / "1.npz", pickle.dumps(_RunsCode(str(marker)), protocol=3))
    err = _one_line_exit_2(capsys, ["run", "--set", "dataset.name=client_npz", "--set", "partition.kind=given",
                                    "--set", f"dataset.path={root}", "--set", "num_clients=2",
                                    "--out", str(tmp_path / "run")])
    assert "1.npz" in err and "forbidden" in err
    assert not marker.exists()


@pytest.mark.parametrize("breakage, expected", [
    ("no_train", "missing train/"),
    ("no_test_file", "has no"),
    ("xy_lengths", "x has 18 samples but y has 17"),
    ("not_npz", "not a readable client .npz"),
    ("bad_config_json", "config.json"),
    ("wrong_count", "set num_clients=3"),
])
def test_malformed_client_npz_exits_2_with_one_line(tmp_path: Path, capsys, breakage: str, expected: str) -> None:
    root = write_client_npz(tmp_path / "npz", clients=3)
    num_clients = 3
    if breakage == "no_train":
        for f in (root / "train").iterdir():
            f.unlink()
        (root / "train").rmdir()
    elif breakage == "no_test_file":
        (root / "test" / "2.npz").unlink()
    elif breakage == "xy_lengths":
        x, y = read_client_npz(root / "train" / "0.npz")
        np.savez_compressed(root / "train" / "0.npz", data={"x": x, "y": y[:-1]})
    elif breakage == "not_npz":
        (root / "test" / "1.npz").write_bytes(b"not a zip")
    elif breakage == "bad_config_json":
        (root / "config.json").write_text("{num_classes: ten")
    elif breakage == "wrong_count":
        num_clients = 5
    err = _one_line_exit_2(capsys, ["run", "--set", "dataset.name=client_npz", "--set", "partition.kind=given",
                                    "--set", f"dataset.path={root}", "--set", f"num_clients={num_clients}",
                                    "--out", str(tmp_path / "run")])
    assert expected in err


def test_given_partition_refuses_other_partition_keys_and_needs_a_given_dataset(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="remove partition.alpha"):
        build_config({"dataset": {"name": "client_npz", "path": "x"}, "partition": {"kind": "given", "alpha": 0.1}})
    with pytest.raises(UserError, match="set partition.kind given"):
        build_config({"dataset": {"name": "client_npz", "path": "x"}})
    with pytest.raises(UserError, match="names each sample's client"):
        build_config({"dataset": {"name": "digits"}, "partition": {"kind": "given"}})
    with pytest.raises(UserError, match="max_train_samples"):
        build_config({"dataset": {"name": "client_npz", "path": "x", "max_train_samples": 5},
                      "partition": {"kind": "given"}})


def test_client_folders_load_with_sorted_names_and_union_of_classes(tmp_path: Path) -> None:
    root = write_client_folders(tmp_path / "folders", clients=3)
    config = _config(root, "client_folders", num_clients=3)
    federation = Federation.build(config)
    assert federation.dataset.clients.names == ["c0", "c1", "c2"]
    assert federation.dataset.input_shape == (1, 28, 28)
    expected_classes = sorted({p.name for p in root.glob("*/*/*")})
    assert federation.dataset.class_names == expected_classes
    for k, data in enumerate(federation.clients):
        assert data.num_train == 12 and int(data.test_y.shape[0]) == 6
    assert federation.partition["kind"] == "given" and federation.partition["client_names"] == ["c0", "c1", "c2"]


def test_client_folders_client_without_test_exits_2(tmp_path: Path, capsys) -> None:
    root = write_client_folders(tmp_path / "folders", clients=2)
    import shutil

    shutil.rmtree(root / "c1" / "test")
    err = _one_line_exit_2(capsys, ["run", "--set", "dataset.name=client_folders", "--set", "partition.kind=given",
                                    "--set", f"dataset.path={root}", "--set", "num_clients=2",
                                    "--out", str(tmp_path / "run")])
    assert "client c1" in err and "test/" in err


def test_client_npz_run_end_to_end_records_the_given_partition(tmp_path: Path, capsys) -> None:
    root = write_client_npz(tmp_path / "npz", clients=4, per_client=16)
    out = tmp_path / "run"
    code = main(["run", "--set", "dataset.name=client_npz", "--set", "partition.kind=given", "--set",
                 f"dataset.path={root}", "--set", "num_clients=4", "--set", "rounds=1", "--set",
                 "model_pool=[cnn4,cnn5]", "--set", "train.batch_size=8", "--out", str(out)])
    assert code == 0
    partition = json.loads((out / "partition.json").read_text())
    assert partition["kind"] == "given" and partition["client_names"] == ["0", "1", "2", "3"]
    assert [c["num_train"] for c in partition["clients"]] == [12] * 4
    assert [c["num_test"] for c in partition["clients"]] == [4] * 4
    assert json.loads((out / "summary.json").read_text())["dataset"] == "client_npz"


def test_a_deflate_bomb_member_is_refused_before_it_is_inflated(tmp_path: Path, monkeypatch) -> None:
    """Issue 30: a member of a few hundred KB that inflates to 256 MiB of zeros (cap lowered to 64 MiB
    here, half the available memory otherwise) is refused from its declared size; zipfile never opens it."""
    from pfedlora.data import cache

    path = tmp_path / "0.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (64 << 20,)})
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for _ in range(256):
                member.write(zeros)
        archive.writestr("y.npy", b"")
    assert path.stat().st_size < 2 << 20
    monkeypatch.setattr(cache, "memory_cap_bytes", lambda: 64 << 20)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(name) or real_open(self, name, *a, **k))
    with pytest.raises(UserError, match=r"member 'x.npy' inflated is 268,435,5\d\d bytes, over the cap of 67,108,864") as error:
        read_client_npz(path)
    assert "\n" not in str(error.value) and opened == []


def test_an_array_header_declaring_more_than_the_cap_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A small member whose npy header declares a huge shape: refused from the shape, nothing allocated."""
    from pfedlora.data import cache

    path = tmp_path / "0.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1 << 40, 3)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(64))
        archive.writestr("y.npy", b"")
    monkeypatch.setattr(cache, "memory_cap_bytes", lambda: 64 << 20)
    with pytest.raises(UserError, match=r"array 'x.npy' of shape \[1099511627776, 3\] is 26,388,279,066,624 bytes"):
        read_client_npz(path)
