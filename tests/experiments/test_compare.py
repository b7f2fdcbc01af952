"""Comparison table: Δ, reduction factors and time-to-target; the compare command end to end."""

import csv
import math
from pathlib import Path

import pytest

from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.experiments.compare import RunRecord, resolve_algorithms, summarize_comparison


def _record(algorithm, seed, accs, flops_per_round, bytes_per_round, clients=2):
    history, flops, sent = [], 0, 0
    for round_index, acc in enumerate(accs, 1):
        flops += flops_per_round
        sent += bytes_per_round
        history.append({"round": round_index, "mean_acc": acc, "cum_train_flops": flops, "cum_server_flops": 0,
                        "cum_up_bytes": sent / 2, "cum_down_bytes": sent / 2})
    rounds = len(accs)
    summary = {"algorithm": algorithm, "seed": seed, "final_accuracy": accs[-1], "best_accuracy": max(accs),
               "client_rounds": clients * rounds, "total_train_flops": flops, "total_up_bytes": sent / 2,
               "total_down_bytes": sent / 2, "server_flops_per_round": 0.0}
    return RunRecord(algorithm, seed, Path(f"{algorithm}-{seed}"), summary, history)


def test_reduction_factors_delta_and_time_to_target_on_synthetic_histories():
    records = [
        _record("pfedlora", 0, [50, 80, 90], flops_per_round=100, bytes_per_round=10),
        _record("pfedlora", 1, [60, 70, 80], flops_per_round=100, bytes_per_round=10),
        _record("fedkd", 0, [40, 60, 70], flops_per_round=1200, bytes_per_round=80),
        _record("fedkd", 1, [40, 50, 70], flops_per_round=1200, bytes_per_round=80),
        _record("fd", 0, [30, 40, 50], flops_per_round=50, bytes_per_round=1),
    ]
    table = summarize_comparison(records, target_fraction=0.9)
    rows = {row["algorithm"]: row for row in table["rows"]}
    assert table["best_baseline"] == "fedkd" and rows["fedkd"]["is_best_baseline"]
    assert table["target_accuracy"] == pytest.approx(63.0)  # 0.9 x fedkd's final 70
    ours = rows["pfedlora"]
    assert ours["final_acc_mean"] == 85 and ours["final_acc_std"] == pytest.approx(math.sqrt(50))
    assert ours["best_acc_mean"] == 85 and ours["delta_to_best_baseline"] == 15
    # per client per round: 100 FLOPs / 2 clients vs 1200 / 2
    assert ours["train_flops_per_client_round"] == 50 and ours["comm_bytes_per_client_round"] == 5
    assert ours["compute_reduction_x"] == pytest.approx(12.0) and ours["comm_reduction_x"] == pytest.approx(8.0)
    # pfedlora reaches 63% in round 2 (both seeds): 200 FLOPs, 20 bytes; fedkd in round 3: 3600, 240
    assert ours["rounds_to_target"] == 2 and ours["flops_to_target"] == 200 and ours["bytes_to_target"] == 20
    assert ours["flops_to_target_reduction_x"] == pytest.approx(18.0)
    assert ours["bytes_to_target_reduction_x"] == pytest.approx(12.0)
    assert rows["fedkd"]["compute_reduction_x"] == 1.0 and rows["fedkd"]["delta_to_best_baseline"] == 0
    assert rows["fd"]["target_reached"] == "0/1" and rows["fd"]["flops_to_target_reduction_x"] is None
    assert rows["fd"]["compute_reduction_x"] == pytest.approx(24.0)

    absolute = summarize_comparison(records, target_accuracy=85.0)
    assert absolute["target_accuracy"] == 85.0 and absolute["target_rule"] == "absolute"
    assert {r["algorithm"]: r["target_reached"] for r in absolute["rows"]}["pfedlora"] == "1/2"

    alone = summarize_comparison(records[:2])
    assert alone["best_baseline"] is None and alone["rows"][0]["compute_reduction_x"] is None
    assert alone["rows"][0]["delta_to_best_baseline"] is None


def test_algorithm_list_validation():
    assert resolve_algorithms("all")[0] == "pfedlora"
    with pytest.raises(UserError, match="unknown algorithm 'nope'"):
        resolve_algorithms("pfedlora,nope")


def test_compare_command_runs_seeds_writes_tables_and_report_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--algorithms", "pfedlora", "--seeds", "0,1", "--set", "num_clients=2", "--set", "rounds=2",
            "--set", "model_pool=[cnn5]", "--set", "partition.kind=iid", "--set", "train.batch_size=256",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[1/2] pfedlora seed 0" in printed and "[2/2] pfedlora seed 1" in printed
    for name in ("comparison.md", "comparison.csv", "report.md", "accuracy_vs_round.png", "accuracy_vs_bytes.png",
                 "accuracy_vs_flops.png", "client_accuracy.png"):
        assert (out / name).is_file(), name
    assert (out / "pfedlora" / "seed1" / "summary.json").is_file()
    with open(out / "comparison.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["algorithm"] == "pfedlora" and row["seeds"] == "0 1" and float(row["train_flops_per_client_round"]) > 0
    assert row["compute_reduction_x"] == ""  # no baseline compared
    assert "Only pfedlora compared" in (out / "comparison.md").read_text()
    # a second invocation reuses the finished runs
    assert main(args) == 0
    assert "reusing" in capsys.readouterr().out
    # ... also a run written before a key existed (its default keeps the earlier behaviour)
    import yaml

    saved_path = out / "pfedlora" / "seed0" / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    del saved["engine"]["threads"], saved["fd"]["class_stats"]
    saved_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert main(args) == 0
    assert "[1/2] pfedlora seed 0: reusing" in capsys.readouterr().out
    # ... but not one whose config differs in a value
    saved["train"]["lr"] = 0.5
    saved_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert main(args) == 0
    assert "[1/2] pfedlora seed 0: reusing" not in capsys.readouterr().out


def test_all_skips_an_algorithm_the_setting_does_not_admit(tmp_path):
    from pfedlora.experiments.compare import run_all

    ran, said = [], []
    document = {"num_clients": 2, "partition": {"kind": "iid"}, "model_pool": ["cnn4", "cnn5"]}
    with pytest.raises(UserError, match="fedavg needs one architecture"):
        run_all(document, [], ["fedavg"], [0], tmp_path, runner=lambda *a: ran.append(a), announce=said.append)
    assert not ran
    with pytest.raises(Exception):  # the fake runner writes no run directory; skipping happened first
        run_all(document, [], ["fedavg", "standalone"], [0], tmp_path, runner=lambda *a: ran.append(a),
                announce=said.append, skip_incompatible=True)
    assert said[0].startswith("skipping fedavg: config: fedavg needs one architecture")
    assert [a[0].algorithm for a in ran] == ["standalone"]


def test_set_for_overrides_a_key_for_one_algorithm_only(tmp_path):
    from pfedlora.experiments.compare import parse_algorithm_overrides, run_all

    seen = {}

    def runner(config, out, label):
        seen[config.algorithm] = config.train.lr
        raise SystemExit  # nothing needs to run: the configs are what is tested

    scoped = parse_algorithm_overrides(["standalone:train.lr=0.02"])
    with pytest.raises(SystemExit):
        run_all({}, ["train.lr=0.005"], ["standalone"], [0], tmp_path, runner=runner, algorithm_overrides=scoped)
    with pytest.raises(SystemExit):
        run_all({}, ["train.lr=0.005"], ["fd"], [0], tmp_path, runner=runner, algorithm_overrides=scoped)
    assert seen == {"standalone": 0.02, "fd": 0.005}
    for bad in ("train.lr=0.02", "nope:train.lr=0.02", "fd:train.lr"):
        with pytest.raises(UserError, match="--set-for expects ALGORITHM:KEY=VALUE"):
            parse_algorithm_overrides([bad])


def test_the_evaluation_metrics_an_algorithm_reports_become_columns(tmp_path):
    from pfedlora.experiments.compare import comparison_markdown, write_comparison_csv

    records = [_record("pfedlora", s, [50, 60], flops_per_round=1, bytes_per_round=1) for s in (0, 1)]
    for record, share in zip(records, (0.5, 1.5)):
        record.summary |= {"final_adapter_share": share, "final_adapter_flips": 2 * share,
                           "evaluation_metrics": ["adapter_share", "adapter_flips"]}
    records.append(_record("standalone", 0, [40, 55], flops_per_round=1, bytes_per_round=0))
    table = summarize_comparison(records)
    rows = {row["algorithm"]: row for row in table["rows"]}
    assert table["diagnostics"] == ["adapter_share", "adapter_flips"]
    assert rows["pfedlora"]["adapter_share"] == 1.0 and rows["pfedlora"]["adapter_flips"] == 2.0
    assert rows["standalone"]["adapter_share"] is None
    markdown = comparison_markdown(table)
    assert "| algorithm | adapter_share | adapter_flips |" in markdown
    assert "| pfedlora | 1.00 | 2.00 |" in markdown and "| standalone | – | – |" in markdown
    write_comparison_csv(table, tmp_path / "c.csv")
    header, pfedlora_row, standalone_row = (tmp_path / "c.csv").read_text().splitlines()
    assert header.endswith(",target_accuracy,adapter_share,adapter_flips")
    assert pfedlora_row.endswith(",1.0,2.0") and standalone_row.endswith(",,")


def test_reuse_reads_a_missing_changed_default_as_its_former_value_and_ignores_other_sections(tmp_path):
    import yaml

    from pfedlora.experiments.compare import _finished_with

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    document = {"algorithm": "fd", "num_clients": 2, "partition": {"kind": "iid"}}
    written = build_config(document).to_dict()
    assert written["fd"]["class_stats"] == "last_epoch"  # today's default
    # an FD run written before class_stats existed made the pass after training (its former default)
    del written["fd"]["class_stats"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    assert not _finished_with(run_dir, build_config(document))
    assert _finished_with(run_dir, build_config({**document, "fd": {"class_stats": "after_training"}}))
    # another algorithm's run does not depend on the fd section at all
    other = build_config({**document, "algorithm": "standalone"}).to_dict()
    other["fd"]["class_stats"] = "after_training"
    other["fedproto"]["lam"] = 123.0
    (run_dir / "config.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    assert _finished_with(run_dir, build_config({**document, "algorithm": "standalone"}))
    other["train"]["lr"] = 0.5
    (run_dir / "config.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    assert not _finished_with(run_dir, build_config({**document, "algorithm": "standalone"}))


def test_paired_differences_against_the_reference_by_hand(tmp_path):
    from pfedlora.experiments.compare import comparison_markdown, write_comparison_csv

    # final accuracies per seed: standalone 50, 52, 54; fedproto 51, 55, 54 -> differences 1, 3, 0
    records = [_record("fedproto", s, [40, acc], flops_per_round=1, bytes_per_round=2) for s, acc in enumerate((51, 55, 54))]
    records += [_record("standalone", s, [30, acc], flops_per_round=1, bytes_per_round=0) for s, acc in enumerate((50, 52, 54))]
    table = summarize_comparison(records)
    assert table["reference"] == "standalone"  # where it ran, whatever the order
    rows = {row["algorithm"]: row for row in table["rows"]}
    mean = 4 / 3
    half = 4.302652729749464 * math.sqrt(((1 - mean) ** 2 + (3 - mean) ** 2 + mean ** 2) / 2) / math.sqrt(3)
    ours = rows["fedproto"]
    assert ours["final_diff_mean"] == pytest.approx(mean) and ours["final_diff_n"] == 3
    assert (ours["final_diff_ci_low"], ours["final_diff_ci_high"]) == pytest.approx((mean - half, mean + half))
    assert ours["final_diff_excludes_zero"] is False and ours["final_diff_bootstrap_low"] is None
    assert ours["best_diff_mean"] == pytest.approx(mean)
    assert rows["standalone"]["final_diff_mean"] is None  # the reference is not paired with itself
    # a reference that sends nothing: no "comm ×" against its zero bytes
    assert table["best_baseline"] == "fedproto" and rows["fedproto"]["comm_reduction_x"] == 1.0
    markdown = comparison_markdown(table)
    assert "## Paired differences against standalone" in markdown
    assert "| fedproto | +1.33 [-2.46, +5.13] (n=3) | indistinguishable from standalone with 3 seeds |" in markdown
    write_comparison_csv(table, tmp_path / "c.csv")
    with open(tmp_path / "c.csv", newline="") as handle:
        csv_rows = {row["algorithm"]: row for row in csv.DictReader(handle)}
    assert float(csv_rows["fedproto"]["final_diff_ci_low"]) == pytest.approx(mean - half)
    assert csv_rows["fedproto"]["reference"] == "standalone" and csv_rows["standalone"]["final_diff_mean"] == ""

    explicit = summarize_comparison(records, reference="fedproto")
    standalone = {row["algorithm"]: row for row in explicit["rows"]}["standalone"]
    assert standalone["final_diff_mean"] == pytest.approx(-mean)
    # Standalone the best baseline: the others' "comm ×" would be 0 bytes / their bytes, so there is none
    ahead = [_record("standalone", s, [30, 90], flops_per_round=1, bytes_per_round=0) for s in range(3)]
    behind = {row["algorithm"]: row for row in summarize_comparison(records[:3] + ahead)["rows"]}
    assert behind["standalone"]["is_best_baseline"] and behind["fedproto"]["comm_reduction_x"] is None
    with pytest.raises(UserError, match="--reference 'fml' is not among the compared algorithms"):
        summarize_comparison(records, reference="fml")


def test_no_ratio_against_a_zero_cost():
    from pfedlora.experiments.compare import _ratio

    assert _ratio(0.0, 40_000.0) is None and _ratio(0.0, 0.0) is None
    assert _ratio(40_000.0, 20_000.0) == 2.0 and math.isinf(_ratio(40_000.0, 0.0))


def test_compare_checks_the_reference_before_running(tmp_path):
    assert main(["compare", "--algorithms", "standalone", "--seeds", "0", "--reference", "fd",
                 "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x" / "standalone").exists()


def test_a_run_that_named_the_same_data_by_another_path_is_reused(tmp_path, monkeypatch):
    import yaml

    from pfedlora.experiments.compare import _finished_with

    data = tmp_path / "data" / "set.npz"
    data.parent.mkdir()
    data.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    document = {"algorithm": "standalone", "num_clients": 2, "partition": {"kind": "iid"}}
    written = build_config(document).to_dict()
    written["dataset"]["path"] = str(data)  # absolute, as a run made elsewhere wrote it
    (run_dir / "config.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    relative = build_config({**document, "dataset": {**written["dataset"], "path": "data/set.npz"}})
    assert _finished_with(run_dir, relative)
    other = tmp_path / "data" / "other.npz"
    other.write_bytes(b"y")
    assert not _finished_with(run_dir, build_config({**document, "dataset": {**written["dataset"], "path": "data/other.npz"}}))
