"""The run header says what the run trains on: sample counts, classes, and every cap that left data out
(the Banking77 recipe once trained on 1,200 of 10,003 sentences without a word)."""

from pfedlora.cli import main


def _header(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith(("data:", "caps:"))]


def test_the_header_names_counts_classes_and_the_sample_caps(tmp_path, capsys):
    assert main(["run", "--set", "rounds=1", "--set", "num_clients=2", "--set", "model_pool=[cnn5]",
                 "--set", "partition.kind=iid", "--set", "dataset.max_train_samples=200", "--set", "dataset.max_test_samples=100",
                 "--out", str(tmp_path / "run")]) == 0
    data, caps = _header(capsys)
    # digits: 1,797 images, 75% for training (1,347) and 450 for test, before the caps
    assert data == "data: digits, 200 training / 100 test samples, 10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    assert "dataset.max_train_samples=200: kept 200 of 1,347 training samples" in caps
    assert "dataset.max_test_samples=100: kept 100 of 450 test samples" in caps


def test_an_uncapped_run_says_so_and_a_validation_split_is_named(tmp_path, capsys):
    assert main(["run", "--set", "rounds=1", "--set", "num_clients=2", "--set", "model_pool=[cnn5]",
                 "--set", "partition.kind=iid", "--out", str(tmp_path / "plain")]) == 0
    assert _header(capsys)[1] == "caps: none (every sample of both splits is used)"
    assert main(["run", "--set", "rounds=1", "--set", "num_clients=2", "--set", "model_pool=[cnn5]",
                 "--set", "partition.kind=iid", "--set", "dataset.validation_fraction=0.2",
                 "--out", str(tmp_path / "validation")]) == 0
    caps = _header(capsys)[1]
    assert "dataset.validation_fraction=0.2" in caps and "the test split is not read" in caps
