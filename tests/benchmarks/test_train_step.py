"""benchmarks/train_step.py runs, and its textbook and engine variants train to the same weights."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"


def test_train_step_prints_every_variant_and_the_engine_is_bit_identical():
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", "cnn5", "--batch", "8", "--steps", "2"],
                          capture_output=True, text=True, timeout=300, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["step_gflop"] > 0
    assert {"textbook", "engine", "fused_sgd", "channels_last", "bf16"} <= figures.keys()
    assert figures["engine"]["equal_to_textbook"] is True
    assert figures["bf16"]["equal_to_textbook"] is False
    assert all(figures[name]["ms"] > 0 for name in ("textbook", "engine"))
