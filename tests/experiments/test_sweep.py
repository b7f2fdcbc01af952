"""``pfedlora sweep``: grid expansion, up-front validation, tables, plots and reuse of finished runs."""

import csv

import pytest
import yaml
from PIL import Image

from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.experiments.compare import _default_runner
from pfedlora.experiments.sweep import _acc_at, grid_points, point_dir_name, point_label, sweep

TINY = {"rounds": 2, "num_clients": 2, "model_pool": ["cnn5"], "partition": {"kind": "iid"},
        "train": {"batch_size": 32}, "dataset": {"max_train_samples": 160, "max_test_samples": 80}}


def _png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()


def test_grid_points_labels_and_directory_names():
    points = grid_points({"adapter.rank": [8, 16], "adapter.construction": ["reduced", "factorized"]})
    assert points[1] == {"adapter.rank": 8, "adapter.construction": "factorized"}  # last key varies fastest
    assert point_label(points[0]) == "adapter.rank=8,adapter.construction=reduced"
    assert point_dir_name(points[0]) == "adapter.rank-8__adapter.construction-reduced"
    assert point_dir_name({"model_pool": ["cnn1", "cnn5"], "x": "a/b c"}) == 'model_pool-_cnn1_cnn5___x-a_b_c'
    assert len(point_dir_name({"k": "v" * 500})) <= 120
    history = [{"round": 2, "mean_acc": 20.0}, {"round": 4, "mean_acc": 40.0}]
    assert _acc_at(history, 1) is None and _acc_at(history, 3) == 20.0 and _acc_at(history, 9) == 40.0


def test_sweep_section_is_validated_and_not_part_of_a_run():
    plain = build_config(TINY)
    swept = build_config({**TINY, "sweep": {"grid": {"adapter.rank": [2, 4]}, "seeds": [0, 1]}})
    assert swept.to_dict() == plain.to_dict() and "sweep" not in plain.to_dict()
    for bad, message in (({"grid": {"seed": [0, 1]}}, "cannot be swept"), ({"grid": {"sweep.seeds": [[0]]}}, "cannot be swept"),
                         ({"grid": {"adapter.rank": []}}, "non-empty"), ({"algorithms": ["nope"]}, "unknown algorithm"),
                         ({"algorithms": "some"}, "'all'")):
        with pytest.raises(UserError, match=message):
            build_config({"sweep": bad})


def test_sweep_runs_the_grid_writes_table_and_plots_and_reuses_runs(tmp_path):
    calls = []

    def counting_runner(config, run_dir, label):
        calls.append(label)
        return _default_runner(config, run_dir, label)

    document = {**TINY, "sweep": {"grid": {"adapter.rank": [2, 4], "adapter.mu": [0.3, 0.7]},
                                  "rounds_of_interest": [1]}}
    out = tmp_path / "sweep"
    result = sweep(document, ["rounds=1"], out, runner=counting_runner, announce=lambda _: None)
    assert len(calls) == 4 and calls[0].startswith("adapter.rank=2,adapter.mu=0.3 ")
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["adapter.rank"], r["adapter.mu"]) for r in rows] == [("2", "0.3"), ("2", "0.7"), ("4", "0.3"), ("4", "0.7")]
    assert {r["algorithm"] for r in rows} == {"pfedlora"}
    assert rows[0]["acc_round_1"] == rows[0]["final_acc_mean"]  # one round: the final round
    by_rank = {rank: {r["adapter_parameters"] for r in rows if r["adapter.rank"] == rank} for rank in ("2", "4")}
    assert len(by_rank["2"]) == 1 and len(by_rank["4"]) == 1 and int(*by_rank["2"]) < int(*by_rank["4"])
    # the communicated adapter grows with the rank; the mixing weight mu changes nothing the clients send
    assert float(rows[0]["comm_bytes_per_client_round"]) == float(rows[1]["comm_bytes_per_client_round"])
    assert float(rows[0]["comm_bytes_per_client_round"]) < float(rows[2]["comm_bytes_per_client_round"])
    for name in ("sweep_adapter.rank.png", "sweep_adapter.mu.png", "accuracy_vs_round.png"):
        _png(out / name)
    markdown = (out / "sweep.md").read_text()
    assert "`adapter.rank` ∈ {2, 4}" in markdown and "(sweep_adapter.mu.png)" in markdown
    assert markdown.count("| pfedlora |") == 4 and (out / "report.md").is_file()
    assert result["rows"][0]["point"] == "adapter.rank-2__adapter.mu-0.3"

    # a re-run (here with --grid narrowing mu) reuses every finished run
    again = sweep(document, ["rounds=1"], out, grid_overrides=["adapter.mu=[0.7]"], runner=counting_runner,
                  announce=lambda _: None)
    assert len(calls) == 4 and [r["adapter.mu"] for r in again["rows"]] == [0.7, 0.7]


@pytest.mark.parametrize("grid, needle", [
    ("adapter.rnk=[2,4]", "unknown key 'adapter.rnk'"),
    ("adapter.rank=[4,0]", "adapter.rank=0"),
    ("adapter.construction=[reduced,diagonal]", "adapter.construction"),
    ("seed=[0,1]", "cannot be swept"),
    ("adapter.rank=4", "non-empty list"),
])
def test_bad_grid_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, grid, needle):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "never"
    assert main(["sweep", "--config", str(config), "--grid", "adapter.mu=[0.5]", "--grid", grid, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_empty_grid_is_an_error(tmp_path, capsys):
    assert main(["sweep", "--set", "rounds=1", "--out", str(tmp_path / "o")]) == 2
    assert "grid is empty" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_sweep_command_end_to_end(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "rounds": 1, "sweep": {"seeds": [5], "algorithms": ["fedavg"]}}))
    out = tmp_path / "cli"
    args = ["sweep", "--config", str(config), "--grid", "adapter.construction=[reduced, factorized]",
            "--algorithms", "pfedlora", "--seeds", "0", "--set", "adapter.rank=2", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| reduced | pfedlora |" in printed and "| factorized | pfedlora |" in printed
    assert "sweep.md" in printed and "sweep_adapter.construction.png" in printed
    assert (out / "adapter.construction-factorized" / "pfedlora" / "seed0" / "summary.json").is_file()
    assert not (out / "adapter.construction-reduced" / "fedavg").exists()  # --algorithms replaced the config's
    _png(out / "sweep_adapter.construction.png")


def test_linked_keys_vary_together():
    from pfedlora.experiments.sweep import _point_overrides

    points = grid_points({"num_clients+fraction": [[100, 0.1], [1000, 0.01]], "adapter.rank": [4, 8]})
    assert len(points) == 4  # 2 linked values x 2 ranks, not 2 x 2 x 2
    assert _point_overrides(points[3]) == ["num_clients=1000", "fraction=0.01", "adapter.rank=8"]
    # digits' 1,347 training images hold 1,000 iid clients (TINY's capped subset would not: refused up front)
    config = build_config({"partition": {"kind": "iid"}}, _point_overrides(points[3]))
    assert (config.num_clients, config.fraction, config.adapter.rank) == (1000, 0.01, 8)
    for bad, message in (({"num_clients+fraction": [[100]]}, "lists of 2 items"),
                         ({"num_clients+fraction": [5]}, "lists of 2 items"),
                         ({"rounds+seed": [[1, 2]]}, "cannot be swept")):
        with pytest.raises(UserError, match=message):
            build_config({"sweep": {"grid": bad}})


def test_table_shows_selected_clients_accuracy_only_under_partial_participation():
    from pfedlora.config import SweepConfig
    from pfedlora.experiments.sweep import sweep_table

    row = {"num_clients": 100, "algorithm": "pfedlora", "final_acc_mean": 50.0, "final_acc_std": 0.0,
           "best_acc_mean": 51.0, "best_acc_std": 0.0, "train_flops_per_client_round": 1e9,
           "comm_bytes_per_client_round": 1e3, "adapter_parameters": 10, "selected_clients_final_acc": 50.0}
    settings = SweepConfig(grid={"num_clients": [100]})
    assert "clients ever selected" not in sweep_table([row], settings)
    table = sweep_table([{**row, "selected_clients_final_acc": 61.5}], settings)
    assert "clients ever selected" in table and "| 61.50 |" in table


def test_grid_aggregates_pair_each_point_and_follow_rliable_by_hand():
    from pfedlora.experiments.sweep import aggregate_markdown, grid_aggregates

    def row(point, algorithm, finals):
        return {"point": point, "algorithm": algorithm, "final_by_seed": dict(enumerate(finals))}

    rows = [row("a", "standalone", [50] * 5), row("a", "fedproto", [50, 50, 50, 50, 60]),
            row("b", "standalone", [70] * 5), row("b", "fedproto", [71] * 5),
            row("c", "fedproto", [1.0])]  # no standalone at c: not paired
    aggregates = grid_aggregates(rows, "standalone")
    agg = aggregates["fedproto"]
    assert agg.settings == 2 and agg.mean_gain == pytest.approx(1.5)
    assert (agg.mean_gain_low, agg.mean_gain_high) == pytest.approx((0.5, 3.5))  # see test_stats
    assert agg.probability_of_improvement == pytest.approx(0.8)
    table = "\n".join(aggregate_markdown(aggregates, "standalone"))
    assert "| fedproto | 2 | 10 | +1.50 [+0.50, +3.50] | 0.80 [" in table
    assert grid_aggregates(rows[:2], "standalone") == {}  # one point: nothing to aggregate
