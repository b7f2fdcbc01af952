"""Issue 35, item 5: what a private run's metrics.csv and summary.json leave out (Privacy.released)."""

from __future__ import annotations

from pfedlora.federation.privacy import PRE_NOISE, SAMPLE_REVEALING, Privacy

ROW = {"round": 3, "mean_acc": 51.0, "train_loss": 0.7, "expected": 2, "received": 2, "rejected": 0,
       "up_bytes": 4096, "cum_up_bytes": 8192, "eval_flops": 10, "epsilon": 1.5}


def _privacy(mode: str) -> Privacy:
    return Privacy(mode, 1.0 if mode != "off" else 0.0, 1.0 if mode != "off" else 0.0, 1e-5, 0)


def test_off_keeps_everything_local_drops_the_pre_noise_loss_central_drops_the_sample_too():
    assert _privacy("off").released(ROW) == ROW
    local = _privacy("local").released(ROW)
    assert set(ROW) - set(local) == {"train_loss"}  # the fixed-size selection is public in local mode
    central = _privacy("central").released(ROW)
    assert set(central) == {"round", "mean_acc", "eval_flops", "epsilon"}
    assert set(PRE_NOISE) <= set(ROW) and {"expected", "received", "rejected", "up_bytes"} <= set(SAMPLE_REVEALING)
