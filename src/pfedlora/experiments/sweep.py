"""``pfedlora sweep``: run a grid of config values and tabulate/plot accuracy and costs against them.

The grid is the ``sweep`` section of the config (``grid``: dotted key -> values, the cartesian
product in declaration order; ``algorithms``; ``seeds``; ``rounds_of_interest``), plus ``--grid``
on the command line. Every grid point's config is built (validated) before anything runs or is
written, so a bad key or value stops the sweep with one line naming it.

Each grid point's runs (one per algorithm and seed) live under ``OUT/<point>/``; finished runs are
reused and an interrupted sweep continues. All points' runs are planned (configs validated) first
and then executed together, so ``--jobs N`` keeps N runs going across the whole grid. Outputs:

* ``sweep.csv``: one row per (grid point, algorithm): the swept keys, then the comparison metrics
  (final / best accuracy mean ± std over seeds, per-client-per-round training FLOPs and bytes,
  adapter parameters, accuracy at each round of interest) and the paired difference in final
  accuracy against the reference algorithm (``--reference``; see :mod:`pfedlora.experiments.compare`);
* ``sweep_<KEY>.png`` for every swept key: final accuracy, training FLOPs / client / round and
  communication bytes / client / round against the key's values, one line per algorithm and
  combination of the other swept keys, error bars = 95% Student t interval of the mean over seeds;
* ``sweep.md``: the grid, the table, the aggregate over the grid's points (rliable's stratified
  bootstrap interval of the mean gain and probability of improvement over the reference,
  :func:`pfedlora.experiments.stats.aggregate_gain`) and the plots; ``report.md``: accuracy vs round
  of every run.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pfedlora.config import SweepConfig, build_config, parse_override
from pfedlora.errors import UserError
from pfedlora.federation.preflight import runnable_config
from pfedlora.experiments.compare import (
    ExecutionOptions, RunRecord, Runner, _costs, _default_runner, _mean_std, choose_reference, difference_text,
    execute_runs, human, load_run, mean_std_text, plan_runs, summarize_comparison, verdict_text,
)
from pfedlora.experiments.stats import AggregateGain, aggregate_gain, t_interval
from pfedlora.metrics.run_dir import write_atomic
from pfedlora.metrics.tracking import finish_group, group_planned_runs

METRIC_COLUMNS = [
    "algorithm", "seeds", "final_acc_mean", "final_acc_std", "best_acc_mean", "best_acc_std",
    "train_flops_per_client_round", "train_flops_std", "up_bytes_per_client_round", "down_bytes_per_client_round",
    "comm_bytes_per_client_round", "comm_bytes_std", "server_flops_per_round", "adapter_parameters",
    "selected_clients_final_acc", "reference", "final_diff_mean", "final_diff_ci_low", "final_diff_ci_high",
    "final_diff_bootstrap_low", "final_diff_bootstrap_high", "final_diff_n", "final_diff_excludes_zero",
]
# (column, 95%-interval half-width column, axis label, is a cost) of the three panels of every sweep_<KEY>.png
PANELS = [
    ("final_acc_mean", "final_acc_ci95", "final mean client accuracy (%)", False),
    ("train_flops_per_client_round", "train_flops_ci95", "training FLOPs / client / round", True),
    ("comm_bytes_per_client_round", "comm_bytes_ci95", "bytes (up + down) / client / round", True),
]


def _half_width(values: list[float]) -> float:
    """Half the 95% Student t interval of the mean of ``values`` (0 for one value: no bar)."""
    interval = t_interval(values)
    return 0.0 if interval is None else (interval[1] - interval[0]) / 2


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``--grid KEY=[v1, v2]`` (the value parsed as a YAML list)."""
    key, value = parse_override(text)
    if not isinstance(value, list) or not value:
        raise UserError(f"--grid expects KEY=[v1, v2, ...] with a non-empty list (e.g. adapter.rank=[4,8]), got {text!r}")
    return key, value


def sweep_settings(document: dict[str, Any], overrides: Sequence[str],
                   grid_overrides: Sequence[str] = ()) -> SweepConfig:
    """The validated sweep section: the config's, with ``--set`` and ``--grid`` applied."""
    base = build_config(document, list(overrides)).sweep
    if not grid_overrides:
        return base
    grid = dict(base.grid)
    for text in grid_overrides:
        key, values = parse_grid_option(text)
        grid[key] = values
    merged = {**base.model_dump(mode="python"), "grid": grid}
    return build_config({"sweep": merged}).sweep  # same validation (and messages) as the config file


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the grid, keys in declaration order (the last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, combination)) for combination in itertools.product(*(grid[k] for k in keys))]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def point_label(point: dict[str, Any]) -> str:
    """``adapter.rank=8,adapter.construction=reduced``."""
    return ",".join(f"{key}={_text(value)}" for key, value in point.items())


def point_dir_name(point: dict[str, Any]) -> str:
    """A safe directory name for a grid point: ``adapter.rank-8__adapter.construction-reduced``."""
    parts = [f"{key}-{_text(value)}" for key, value in point.items()]
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", "__".join(parts)).strip("._") or "point"
    if len(name) > 120:  # file-name limits: keep a readable prefix, disambiguate by a hash of the label
        name = f"{name[:100]}__{hashlib.sha1(point_label(point).encode()).hexdigest()[:12]}"
    return name


def _point_overrides(point: dict[str, Any]) -> list[str]:
    """``KEY=VALUE`` overrides of a point; a linked key ``a+b`` with value ``[x, y]`` sets a=x and b=y."""
    # JSON is YAML, so parse_override gives back exactly these values
    overrides = []
    for key, value in point.items():
        pairs = zip(key.split("+"), value) if "+" in key else [(key, value)]
        overrides += [f"{name}={json.dumps(item)}" for name, item in pairs]
    return overrides


def _check_points(document: dict[str, Any], overrides: Sequence[str], points: list[dict[str, Any]],
                  algorithms: Sequence[str], seed: int, everything: bool) -> None:
    """Build every point's config for every algorithm; UserError naming the point on bad input.

    With ``all`` algorithms a point only has to admit one of them (the others are skipped later,
    as ``compare --algorithms all`` does).
    """
    for point in points:
        errors = []
        for algorithm in algorithms:
            try:
                runnable_config(document, [*overrides, *_point_overrides(point), f"algorithm={algorithm}", f"seed={seed}"])
            except UserError as exc:
                errors.append(exc)
        if errors and (not everything or len(errors) == len(algorithms)):
            raise UserError(f"sweep grid point {point_label(point)}: {errors[0]}")


def _acc_at(history: list[dict[str, float]], round_index: int) -> float | None:
    """Mean accuracy of the last evaluated round <= ``round_index`` (None before the first evaluation)."""
    rows = [row for row in history if row["round"] <= round_index]
    return rows[-1]["mean_acc"] if rows else None


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _rows_for_point(point: dict[str, Any], records: list[RunRecord], rounds_of_interest: Sequence[int],
                    point_dir: str, reference: str | None = None) -> list[dict[str, Any]]:
    algorithms = list(dict.fromkeys(r.algorithm for r in records))
    table = summarize_comparison(records, reference=reference if reference in algorithms else None)
    rows = []
    for summary_row in table["rows"]:
        runs = [r for r in records if r.algorithm == summary_row["algorithm"]]
        costs = [_costs(r.summary) for r in runs]
        adapter = [r.summary["adapter_parameters"] for r in runs if "adapter_parameters" in r.summary]
        row = {**point, **{k: summary_row[k] for k in METRIC_COLUMNS if k in summary_row},
               "train_flops_std": _mean_std([c["train_flops_per_client_round"] for c in costs])[1],
               "comm_bytes_std": _mean_std([c["comm_bytes_per_client_round"] for c in costs])[1],
               "final_acc_ci95": _half_width([r.summary["final_accuracy"] for r in runs]),
               "train_flops_ci95": _half_width([c["train_flops_per_client_round"] for c in costs]),
               "comm_bytes_ci95": _half_width([c["comm_bytes_per_client_round"] for c in costs]),
               "reference": table["reference"], "final_diff_object": summary_row["final_diff_object"],
               "final_by_seed": {r.seed: r.summary["final_accuracy"] for r in runs},
               "adapter_parameters": adapter[0] if adapter else None,
               "selected_clients_final_acc": _mean([r.summary.get("selected_clients_final_accuracy") for r in runs]),
               "point": point_dir}
        for round_index in rounds_of_interest:
            row[f"acc_round_{round_index}"] = _mean([_acc_at(r.history, round_index) for r in runs])
        rows.append(row)
    return rows


def grid_aggregates(rows: list[dict[str, Any]], reference: str) -> dict[str, AggregateGain]:
    """For every algorithm but ``reference``: its final accuracy against the reference's over the
    grid points both ran (two points at least), rliable's aggregates (:func:`aggregate_gain`)."""
    by_point: dict[str, dict[str, dict[int, float]]] = {}
    for row in rows:
        by_point.setdefault(row["point"], {})[row["algorithm"]] = row["final_by_seed"]
    algorithms = list(dict.fromkeys(row["algorithm"] for row in rows if row["algorithm"] != reference))
    aggregates = {}
    for algorithm in algorithms:
        points = [p for p, runs in by_point.items() if algorithm in runs and reference in runs
                  and set(runs[algorithm]) & set(runs[reference])]
        if len(points) >= 2:
            aggregates[algorithm] = aggregate_gain({p: by_point[p][reference] for p in points},
                                                   {p: by_point[p][algorithm] for p in points})
    return aggregates


def aggregate_markdown(aggregates: dict[str, AggregateGain], reference: str) -> list[str]:
    """The over-the-grid table (empty with fewer than two points)."""
    if not aggregates:
        return []
    lines = [f"Over the grid's points, final accuracy against {reference}: mean gain = the mean over points of "
             "each point's mean paired difference, with the 95% stratified bootstrap interval (seeds resampled "
             f"within each point); P(improvement) = P(a run of the algorithm beats a run of {reference} at the same "
             "point), averaged over points, with its interval (rliable, Agarwal et al. 2021); pooled: the paired "
             "t interval of every per-seed difference together.", "",
             "| algorithm | points | pairs | mean gain [95% CI] | P(improvement) [95% CI] | pooled |",
             "|---|---|---|---|---|---|"]
    for algorithm, agg in aggregates.items():
        lines.append(f"| {algorithm} | {agg.settings} | {agg.runs} | {agg.mean_gain:+.2f} [{agg.mean_gain_low:+.2f}, "
                     f"{agg.mean_gain_high:+.2f}] | {agg.probability_of_improvement:.2f} [{agg.probability_low:.2f}, "
                     f"{agg.probability_high:.2f}] | {agg.pooled.text()} |")
    return lines


def sweep(document: dict[str, Any], overrides: Sequence[str], out: str | Path, *,
          grid_overrides: Sequence[str] = (), runner: Runner = _default_runner,
          announce: Callable[[str], None] = print, execution: ExecutionOptions | None = None,
          reference: str | None = None) -> dict[str, Any]:
    """Run the grid under ``out``; write sweep.csv, sweep.md, sweep_<KEY>.png and report.md.

    ``reference``: the algorithm the others are paired with (default: standalone where it runs,
    else the first). Returns ``{"keys", "rows", "settings", "paths", "reference", "aggregates"}``;
    ``rows`` as in sweep.csv.
    """
    from pfedlora import registry
    from pfedlora.experiments.report import write_report

    settings = sweep_settings(document, overrides, grid_overrides)
    if not settings.grid:
        raise UserError("sweep: the grid is empty; declare sweep.grid in the config (key: [values]) "
                        "or pass --grid KEY=[v1,v2]")
    everything = settings.algorithms == "all"
    algorithms = registry.names(imported=False) if everything else list(settings.algorithms)
    reference = choose_reference(algorithms, reference)
    # the runs never see the sweep section (nor --set sweep.*): it is not part of a run's config
    run_document = {k: v for k, v in document.items() if k != "sweep"}
    run_overrides = [text for text in overrides if parse_override(text)[0].split(".")[0] != "sweep"]
    points = grid_points(settings.grid)
    _check_points(run_document, run_overrides, points, algorithms, settings.seeds[0], everything)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {str(out)!r} exists and is not a directory")
    names = [point_dir_name(p) for p in points]
    if len(set(names)) < len(names):  # values that differ only in unsafe characters
        names = [f"{i:03d}-{name}" for i, name in enumerate(names, 1)]

    # every point's runs are planned first and then executed together, so --jobs spans the whole grid
    planned_by_point = []
    for index, (point, name) in enumerate(zip(points, names), 1):
        label = point_label(point)
        announce(f"point {index}/{len(points)}: {label}")
        planned_by_point.append(plan_runs(run_document, [*run_overrides, *_point_overrides(point)], algorithms,
                                          settings.seeds, out / name, announce=announce,
                                          skip_incompatible=everything, label_prefix=f"{label} "))
    all_planned = [run for planned in planned_by_point for run in planned]
    group_planned_runs(all_planned, out, "sweep", announce)  # tracking: one experiment, one parent run
    execute_runs(all_planned, runner=runner, announce=announce, execution=execution)

    rows: list[dict[str, Any]] = []
    all_records: list[RunRecord] = []
    for point, name, planned in zip(points, names, planned_by_point):
        records = [load_run(run.run_dir) for run in planned]
        all_records += records
        rows += _rows_for_point(point, records, settings.rounds_of_interest, name, reference)

    keys = list(settings.grid)
    paths = {"csv": out / "sweep.csv", "markdown": out / "sweep.md"}
    _write_csv(rows, keys, settings.rounds_of_interest, paths["csv"])
    plots = write_sweep_plots(rows, settings.grid, out)
    paths["report"] = write_report([r.path for r in all_records], out, title="Sweep runs")
    aggregates = grid_aggregates(rows, reference)
    write_atomic(paths["markdown"], sweep_markdown(rows, settings, plots, len(all_records), aggregates, reference))
    finish_group(out, [paths["csv"], paths["markdown"], *plots], announce)
    return {"keys": keys, "rows": rows, "settings": settings, "paths": {**paths, "plots": plots},
            "reference": reference, "aggregates": aggregates}


def _columns(keys: Sequence[str], rounds_of_interest: Sequence[int]) -> list[str]:
    return [*keys, *METRIC_COLUMNS[:6], *(f"acc_round_{r}" for r in rounds_of_interest), *METRIC_COLUMNS[6:], "point"]


def _write_csv(rows: list[dict[str, Any]], keys: Sequence[str], rounds_of_interest: Sequence[int], path: Path) -> None:
    columns = _columns(keys, rounds_of_interest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else _text(row[c]) if c in keys else row[c]) for c in columns})


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def write_sweep_plots(rows: list[dict[str, Any]], grid: dict[str, list[Any]], out: Path) -> list[Path]:
    """One ``sweep_<KEY>.png`` per swept key (three panels); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from pfedlora.experiments.report import algorithm_colour

    paths = []
    for key, values in grid.items():
        others = [k for k in grid if k != key]
        numeric = _numeric(values)
        positions = {_text(v): (v if numeric else i) for i, v in enumerate(values)}
        lines: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            name = ", ".join([row["algorithm"], *(f"{k}={_text(row[k])}" for k in others)])
            lines.setdefault(name, []).append(row)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, (column, std_column, ylabel, is_cost) in zip(axes, PANELS):
            plotted = []
            for name, line in lines.items():
                line = sorted(line, key=lambda r: list(positions).index(_text(r[key])))
                xs = [positions[_text(r[key])] for r in line]
                ys = [r[column] for r in line]
                plotted += ys
                ax.errorbar(xs, ys, yerr=[r[std_column] for r in line], marker="o", capsize=3, label=name,
                        color=algorithm_colour(line[0]["algorithm"]))
            # log only across a decade or more: inside one decade a log axis shows no tick labels
            if is_cost and plotted and all(y > 0 for y in plotted) and max(plotted) >= 8 * min(plotted):
                ax.set_yscale("log")
            if not numeric:
                ax.set_xticks(list(positions.values()), list(positions), rotation=20, ha="right")
            else:
                if min(values) > 0 and max(values) >= 8 * min(values):  # e.g. ranks 4..64
                    ax.set_xscale("log")
                ax.set_xticks(values, [_text(v) for v in values])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set(xlabel=key, ylabel=ylabel)
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"sweep over {key} (error bars: 95% t interval of the mean over seeds)")
        fig.tight_layout()
        if len(lines) > 1:  # outside the data, right of the panels
            fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5),
                       fontsize="small", frameon=False)
        path = out / f"sweep_{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def sweep_table(rows: list[dict[str, Any]], settings: SweepConfig) -> str:
    """The markdown table: one line per (grid point, algorithm)."""
    keys = list(settings.grid)
    extra = [f"acc @ round {r}" for r in settings.rounds_of_interest]
    # partial participation: some clients never trained; their accuracy is shown apart
    partial = any(row.get("selected_clients_final_acc") is not None
                  and abs(row["selected_clients_final_acc"] - row["final_acc_mean"]) > 1e-9 for row in rows)
    reference = rows[0].get("reference") if rows else None
    paired = reference is not None and any(row.get("final_diff_object") is not None for row in rows)
    header = [*(f"`{k}`" for k in keys), "algorithm", "final acc",
              *([f"final acc − {reference} [95% CI] (n)"] if paired else []), "best acc", *extra,
              *(["final acc, clients ever selected"] if partial else []),
              "compute / client / round", "comm / client / round", "adapter params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seeds = len(str(row["seeds"]).split()) if "seeds" in row else None
        accs = ["–" if row[f"acc_round_{r}"] is None else f"{row[f'acc_round_{r}']:.2f}"
                for r in settings.rounds_of_interest]
        adapter = "–" if row["adapter_parameters"] is None else f"{row['adapter_parameters']:,}"
        cells = [*(_text(row[k]) for k in keys), row["algorithm"],
                 mean_std_text(row["final_acc_mean"], row["final_acc_std"], seeds),
                 *([_paired_cell(row, reference)] if paired else []),
                 mean_std_text(row["best_acc_mean"], row["best_acc_std"], seeds), *accs,
                 *([f"{row['selected_clients_final_acc']:.2f}"] if partial else []),
                 human(row["train_flops_per_client_round"], "FLOP"), human(row["comm_bytes_per_client_round"], "B"),
                 adapter]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_cell(row: dict[str, Any], reference: str) -> str:
    difference = row.get("final_diff_object")
    if difference is None:
        return "(reference)" if row["algorithm"] == reference else "–"
    verdict = f" {verdict_text(difference, reference)}" if difference.excludes_zero else ""
    return difference_text(difference) + verdict


def sweep_markdown(rows: list[dict[str, Any]], settings: SweepConfig, plots: Sequence[Path], runs: int,
                   aggregates: dict[str, AggregateGain] | None = None, reference: str | None = None) -> str:
    keys = list(settings.grid)
    points = len(grid_points(settings.grid))
    algorithms = "all algorithms the setting admits" if settings.algorithms == "all" else ", ".join(settings.algorithms)
    linked = any("+" in key for key in keys)
    lines = ["# Sweep", "", "Grid (cartesian product" + ("; linked keys `a+b` vary together" if linked else "") + "):", ""]
    lines += [f"- `{key}` ∈ {{{', '.join(_text(v) for v in values)}}}" for key, values in settings.grid.items()]
    lines += ["", (f"{points} points × algorithms: {algorithms} × seeds {', '.join(map(str, settings.seeds))} "
                   f"= {runs} runs. Accuracy in percent, mean ± std over seeds (the value alone for one seed); costs per client per round "
                   "(client training FLOPs; uploaded + downloaded bytes) divided by client-rounds. "
                   "acc @ round R: mean accuracy at the last evaluated round ≤ R."), ""]
    lines += sweep_table(rows, settings).splitlines()
    if aggregates:
        lines += ["", *aggregate_markdown(aggregates, reference or "")]
    lines += ["", "Numbers: `sweep.csv`. Accuracy vs round of every run: [report.md](report.md).", ""]
    for path, key in zip(plots, keys):
        lines += [f"## {key}", "", f"![sweep over {key}]({path.name})", ""]
    return "\n".join(lines)
