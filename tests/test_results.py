"""pfedlora.results: runs, comparisons and sweeps read back as data frames, checked against the files
the runs wrote (metrics.csv, summary.json, comparison.csv, sweep.csv)."""

import csv
import json
from pathlib import Path

import pandas
import pytest

import pfedlora.results
from pfedlora.errors import UserError
from pfedlora.experiments.compare import compare
from pfedlora.experiments.sweep import sweep

# 5 clients with the smallest CNN, 2 rounds: a few seconds a run
TINY = {"num_clients": 5, "rounds": 2, "model_pool": ["cnn5"], "train": {"batch_size": 32}}


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results") / "compare"
    compare(TINY, [], ["standalone", "pfedlora"], [0, 1], out, announce=lambda _: None)
    return out


def test_load_a_comparison_is_one_row_per_run_and_round_with_the_metrics_csv_values(comparison):
    frame = pfedlora.results.load(comparison)
    assert list(frame.columns[:5]) == ["run", "setting", "algorithm", "seed", "round"]
    assert len(frame) == 4 * 2  # 2 algorithms x 2 seeds x 2 evaluated rounds
    assert sorted(set(frame["run"])) == ["pfedlora/seed0", "pfedlora/seed1", "standalone/seed0", "standalone/seed1"]
    for run, rows in frame.groupby("run"):
        written = _csv(comparison / run / "metrics.csv")
        assert list(rows["round"]) == [float(row["round"]) for row in written]
        for column in written[0]:
            assert list(rows[column]) == pytest.approx([float(row[column]) for row in written])
    # a column only pFedLoRA reports is empty for Standalone
    assert frame.loc[frame["algorithm"] == "standalone", "adapter_share"].isna().all()
    assert frame.loc[frame["algorithm"] == "pfedlora", "adapter_share"].notna().all()


def test_summary_of_a_comparison_has_the_paired_statistics_of_comparison_csv(comparison):
    frame = pfedlora.results.summary(comparison)
    assert len(frame) == 4 and set(frame["reference"]) == {"standalone"}
    table = {row["algorithm"]: row for row in _csv(comparison / "comparison.csv")}
    for _, row in frame.iterrows():
        run_summary = json.loads((comparison / row["run"] / "summary.json").read_text())
        assert row["final_accuracy"] == pytest.approx(run_summary["final_accuracy"])
        written = table[row["algorithm"]]
        for field in ("mean", "ci_low", "ci_high", "n"):
            column = f"final_diff_{field}"
            if written[column] == "":
                assert pandas.isna(row[column])
            else:
                assert float(row[column]) == pytest.approx(float(written[column]))
        assert str(row["final_diff_excludes_zero"]) == written["final_diff_excludes_zero"] or (
            written["final_diff_excludes_zero"] == "" and pandas.isna(row["final_diff_excludes_zero"]))
    # a run's own difference: its final accuracy - the reference's on the same seed
    pf = frame[(frame["algorithm"] == "pfedlora") & (frame["seed"] == 1)].iloc[0]
    st = frame[(frame["algorithm"] == "standalone") & (frame["seed"] == 1)].iloc[0]
    assert pf["final_diff"] == pytest.approx(pf["final_accuracy"] - st["final_accuracy"])
    assert pandas.isna(st["final_diff"])
    mean = frame[frame["algorithm"] == "pfedlora"]["final_diff"].mean()
    assert pf["final_diff_mean"] == pytest.approx(mean)
    # another reference
    assert set(pfedlora.results.summary(comparison, reference="pfedlora")["reference"]) == {"pfedlora"}


def test_load_a_single_run_directory(comparison):
    frame = pfedlora.results.load(comparison / "pfedlora" / "seed0")
    assert set(frame["run"]) == {"."} and set(frame["algorithm"]) == {"pfedlora"} and len(frame) == 2
    assert list(pfedlora.results.summary(comparison / "pfedlora" / "seed0")["final_diff"].isna()) == [True]


def test_bad_paths_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        pfedlora.results.load(tmp_path / "missing")
    with pytest.raises(UserError, match="no run directory"):
        pfedlora.results.load(tmp_path)


@pytest.mark.slow
def test_load_and_summary_of_a_sweep_have_the_swept_keys_as_columns(tmp_path):
    document = {**TINY, "sweep": {"grid": {"adapter.rank": [2, 4]}, "algorithms": ["standalone", "pfedlora"],
                                  "seeds": [0, 1]}}
    out = tmp_path / "sweep"
    result = sweep(document, [], out, announce=lambda _: None)
    frame = pfedlora.results.load(out)
    assert "adapter.rank" in frame.columns and list(frame.columns).index("adapter.rank") < list(frame.columns).index("round")
    assert sorted(set(frame["adapter.rank"])) == [2, 4] and len(frame) == 2 * 2 * 2 * 2
    assert sorted(set(frame["setting"])) == ["adapter.rank-2", "adapter.rank-4"]
    runs = pfedlora.results.summary(out)
    assert len(runs) == 8
    # per grid point, pFedLoRA's paired difference against Standalone is sweep.csv's
    for row in _csv(out / "sweep.csv"):
        if row["algorithm"] != "pfedlora":
            continue
        ours = runs[(runs["algorithm"] == "pfedlora") & (runs["adapter.rank"] == int(row["adapter.rank"]))]
        assert ours["final_diff_mean"].iloc[0] == pytest.approx(float(row["final_diff_mean"]))
        assert ours["final_diff_ci_low"].iloc[0] == pytest.approx(float(row["final_diff_ci_low"]))
    assert result["rows"]
