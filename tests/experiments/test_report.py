"""``pfedlora report`` writes valid PNG plots and a report.md embedding them."""

import json
from pathlib import Path

from PIL import Image

from pfedlora.cli import main
from pfedlora.metrics.run_dir import MetricsWriter


def _fake_run(path, algorithm, bytes_per_round, client_accuracies=(50.0, 60.0, 70.0)):
    path.mkdir()
    writer = MetricsWriter(path / "metrics.csv")
    for round_index in (1, 2, 3):
        writer.write({"round": round_index, "mean_acc": 30.0 + 10 * round_index, "std_acc": 1.0,
                      "cum_up_bytes": bytes_per_round * round_index, "cum_down_bytes": bytes_per_round * round_index,
                      "cum_train_flops": 1000 * round_index, "cum_server_flops": 10 * round_index})
    (path / "summary.json").write_text(json.dumps({
        "algorithm": algorithm, "seed": 0, "final_accuracy": 60.0, "best_accuracy": 60.0,
        "client_accuracies": list(client_accuracies), "total_train_flops": 3000, "total_up_bytes": 3 * bytes_per_round}))
    return path


def test_report_writes_valid_pngs_and_markdown(tmp_path, capsys):
    runs = [_fake_run(tmp_path / "a", "pfedlora", 100), _fake_run(tmp_path / "b", "standalone", 0)]
    out = tmp_path / "report"
    assert main(["report", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    for name in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "accuracy_vs_flops.png", "client_accuracy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as image:
            image.verify()
        assert f"({name})" in markdown
    # the run that sends nothing cannot sit on a log-bytes axis: it is drawn at the axis, not left out
    assert "Not plotted" not in markdown


def test_a_zero_byte_algorithm_is_drawn_at_the_axis_with_a_label(tmp_path, monkeypatch):
    saved = _figures(monkeypatch)
    runs = [_fake_run(tmp_path / "a", "pfedlora", 100), _fake_run(tmp_path / "b", "standalone", 0)]
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "report")]) == 0
    ax = saved["accuracy_vs_bytes.png"].axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "standalone seed 0 (0 B: final accuracy, dashed)" in labels
    # the dashed line sits at its final accuracy (60%), across the axis
    assert any(list(line.get_ydata()) == [60.0, 60.0] and line.get_linestyle() == "--" for line in ax.get_lines())


def test_a_client_without_a_test_split_is_left_out_of_its_box(tmp_path):
    run = _fake_run(tmp_path / "a", "pfedlora", 100, client_accuracies=(50.0, None, 70.0))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    with Image.open(tmp_path / "report" / "client_accuracy.png") as image:
        image.verify()


def test_report_on_a_missing_run_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a finished run directory" in capsys.readouterr().err


def test_seeds_of_one_algorithm_are_one_mean_line_with_a_band_in_its_own_colour(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pfedlora.experiments.compare import load_run
    from pfedlora.experiments.report import _seed_groups, algorithm_colour, mean_band

    (tmp_path / "cmp" / "fd").mkdir(parents=True)
    (tmp_path / "cmp" / "fedproto").mkdir()
    runs = [_fake_run(tmp_path / "cmp" / "fd" / f"seed{k}", "fd", 10 * (k + 1)) for k in range(3)]
    runs.append(_fake_run(tmp_path / "cmp" / "fedproto" / "seed0", "fedproto", 5))
    groups = _seed_groups([load_run(p) for p in runs])
    assert [(g.algorithm, len(g.records), g.label) for g in groups] == [("fd", 3, "fd, 3 seeds"),
                                                                        ("fedproto", 1, "fedproto seed 0")]
    curve = mean_band(groups[0].records, lambda row: row["round"])
    assert [p[0] for p in curve] == [1, 2, 3] and curve[0][1:] == (40.0, 40.0, 40.0)
    assert algorithm_colour("fd") != algorithm_colour("fedproto")
    assert algorithm_colour("fd") == plt.get_cmap("tab10").colors[3]


def _figures(monkeypatch):
    """The figures write_report saves, by file name (kept open to inspect)."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    saved = {}
    original = Figure.savefig

    def keep(fig, path, *args, **kwargs):
        saved[Path(path).name] = fig
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    monkeypatch.setattr(plt, "close", lambda *args: None)
    return saved


def test_round_axis_has_integer_ticks_and_one_seed_has_no_band_legend(tmp_path, monkeypatch):
    saved = _figures(monkeypatch)
    run = _fake_run(tmp_path / "a", "pfedlora", 100)
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    ax = saved["accuracy_vs_round.png"].axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # 3 rounds: no tick at 1.25
    for name in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "accuracy_vs_flops.png"):
        legend = saved[name].axes[0].get_legend()
        assert "band" not in legend.get_title().get_text()  # one seed: no band drawn, none explained


def test_several_seeds_keep_the_band_legend(tmp_path, monkeypatch):
    saved = _figures(monkeypatch)
    (tmp_path / "cmp" / "pfedlora").mkdir(parents=True)
    runs = [_fake_run(tmp_path / "cmp" / "pfedlora" / f"seed{k}", "pfedlora", 100) for k in (0, 1)]
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "report")]) == 0
    assert saved["accuracy_vs_round.png"].axes[0].get_legend().get_title().get_text() == (
        "band: 95% t interval of the mean over seeds")


def test_one_seed_tables_show_no_zero_spread():
    from pfedlora.experiments.compare import comparison_markdown

    row = {"algorithm": "pfedlora", "seeds": "0", "final_acc_mean": 77.9, "final_acc_std": 0.0,
           "best_acc_mean": 78.0, "best_acc_std": 0.0, "is_best_baseline": False, "delta_to_best_baseline": None,
           "rounds_to_target": None, "target_reached": "0/1", "train_flops_per_client_round": 1e9,
           "comm_bytes_per_client_round": 1e3, "flops_to_target": None, "bytes_to_target": None,
           "compute_reduction_x": None, "comm_reduction_x": None, "flops_to_target_reduction_x": None,
           "bytes_to_target_reduction_x": None}
    table = {"rows": [row], "best_baseline": None, "target_accuracy": 70.0, "target_rule": "absolute"}
    one = comparison_markdown(table)
    assert "| **pfedlora** | 77.90 | 78.00 |" in one and "± 0.00" not in one
    row |= {"seeds": "0 1", "final_acc_std": 0.5}
    assert "| **pfedlora** | 77.90 ± 0.50 | 78.00 ± 0.00 |" in comparison_markdown(table)


def test_the_band_is_the_95_percent_t_interval_of_the_mean(tmp_path):
    from pfedlora.experiments.compare import load_run
    from pfedlora.experiments.report import mean_band

    runs = []
    for k, shift in enumerate((0.0, 2.0, 4.0)):
        path = tmp_path / f"seed{k}"
        path.mkdir()
        writer = MetricsWriter(path / "metrics.csv")
        writer.write({"round": 1, "mean_acc": 50.0 + shift, "std_acc": 1.0})
        (path / "summary.json").write_text(json.dumps({"algorithm": "fd", "seed": k, "final_accuracy": 50.0 + shift,
                                                       "best_accuracy": 50.0 + shift}))
        runs.append(load_run(path))
    ((_, mean, low, high),) = mean_band(runs, lambda row: row["round"])
    # mean 52, sample std 2, t(0.975, 2) = 4.3027: 52 ± 4.3027 * 2 / sqrt(3)
    assert mean == 52.0 and abs(high - 52.0 - 4.302652729749464 * 2 / 3 ** 0.5) < 1e-9 and abs(low + high - 104) < 1e-9
