"""``pfedlora compare``: several algorithms on identical partitions and seeds, one table.

Every (algorithm, seed) run uses the same config apart from ``algorithm``, and partitions derive
from (config, seed) only, so all algorithms see the same clients and data. Each run writes its
own run directory under ``OUT/<algorithm>/seed<seed>``; a run whose directory already holds a
``summary.json`` for the identical config is reused, so an interrupted comparison continues (a
run directory with a different config is run again, replacing it).

Definitions (also in the README):

* accuracy: final (last evaluated round) and best mean client accuracy, mean ± sample std over
  seeds;
* best baseline: the compared algorithm other than ``pfedlora`` with the highest mean final
  accuracy; Δ = final accuracy − the best baseline's (percentage points);
* computation per client per round: client training FLOPs / client-rounds; communication per
  client per round: (uploaded + downloaded bytes) / client-rounds;
* target: ``target_accuracy`` (absolute, percent) if given, else ``target_fraction`` × the best
  baseline's mean final accuracy (× the best algorithm's when no baseline is compared);
  rounds / FLOPs (training + server) / bytes (up + down) to target: means over the seeds that
  reach it;
* reduction factor (×) of an algorithm = the best baseline's cost / the algorithm's cost, so a
  factor above 1 means the algorithm is cheaper (the paper's 11.81× and 7.41×); none where the best
  baseline's cost is 0 (a ratio against nothing says nothing);
* paired difference against the reference (``--reference``, default ``standalone`` where it ran,
  else the first algorithm): per seed, the algorithm's final (best) accuracy − the reference's on the
  same seed, and rounds to target − the reference's on the seeds both reach it; mean, 95% Student t
  interval, percentile bootstrap interval from 5 seeds up, n (:mod:`pfedlora.experiments.stats`).
  A difference is a gain or a loss only when its interval excludes 0.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pfedlora.config import Config, build_config
from pfedlora.errors import UserError
from pfedlora.experiments.records import RunRecord, human, load_run
from pfedlora.experiments.stats import BOOTSTRAP_MIN_SEEDS, PairedDifference, paired_difference
from pfedlora.federation.preflight import runnable_config
from pfedlora.metrics.costs import time_to_target
from pfedlora.metrics.run_dir import write_atomic
from pfedlora.metrics.tracking import finish_group, group_planned_runs
from pfedlora.registry import section_owners, with_former_defaults

PROPOSED = "pfedlora"
Runner = Callable[[Config, Path, str], dict]


def parse_list(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"--{what} expects a comma-separated list, got {text!r}")
    return items


def resolve_algorithms(text: str) -> list[str]:
    """``all`` (the built-in and installed algorithms) or a comma-separated list of registered ones."""
    from pfedlora import registry

    known = registry.names()
    if text.strip() == "all":
        return registry.names(imported=False)
    names = parse_list(text, "algorithms")
    for name in names:
        if name not in known:
            raise UserError(f"--algorithms: unknown algorithm {name!r}; valid: all, {', '.join(known)}")
    return list(dict.fromkeys(names))


def resolve_seeds(text: str) -> list[int]:
    try:
        return list(dict.fromkeys(int(item) for item in parse_list(text, "seeds")))
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers (e.g. 0,1,2), got {text!r}") from None


def _default_runner(config: Config, out: Path, label: str) -> dict:
    from pfedlora.federation.simulation import run_or_resume

    return run_or_resume(config, out, log=lambda _: None)


def parse_algorithm_overrides(texts: Sequence[str]) -> dict[str, list[str]]:
    """``ALGORITHM:KEY=VALUE`` items (``--set-for``) as {algorithm: [KEY=VALUE, ...]}."""
    from pfedlora.algorithms import algorithm_names

    scoped: dict[str, list[str]] = {}
    for text in texts:
        algorithm, sep, override = text.partition(":")
        if not sep or algorithm not in algorithm_names() or "=" not in override:
            raise UserError(f"--set-for expects ALGORITHM:KEY=VALUE with ALGORITHM one of {', '.join(algorithm_names())} "
                            f"(e.g. standalone:train.lr=0.02), got {text!r}")
        scoped.setdefault(algorithm, []).append(override)
    return scoped


@dataclass(frozen=True)
class ExecutionOptions:
    """How a comparison's or sweep's runs execute: ``--jobs``, ``--executor``, ``--ray-address``."""

    jobs: int = 1
    executor: str = "local"
    ray_address: str | None = None
    ray_shared_fs: bool = False

    @property
    def parallel(self) -> bool:
        return self.executor == "ray" or self.jobs > 1


@dataclass
class PlannedRun:
    """One (algorithm, seed) run of a comparison: its config, directory, and whether it is finished."""

    algorithm: str
    seed: int
    config: Config
    run_dir: Path
    label: str
    finished: bool


def plan_runs(document: dict[str, Any], overrides: Sequence[str], algorithms: Sequence[str], seeds: Sequence[int],
              out: Path, announce: Callable[[str], None] = print, skip_incompatible: bool = False,
              algorithm_overrides: dict[str, list[str]] | None = None, label_prefix: str = "") -> list[PlannedRun]:
    """Every (algorithm, seed) run under ``out``, each config built and validated; runs already
    finished with the same config are marked for reuse.

    ``algorithm_overrides``: extra ``KEY=VALUE`` overrides for one algorithm only (e.g. each
    algorithm's tuned learning rate), applied after ``overrides``.

    ``skip_incompatible`` (``--algorithms all``): an algorithm the setting does not admit (FedAvg
    on a heterogeneous pool) is skipped with a line saying why instead of stopping the comparison.
    """
    configs = []
    for algorithm in algorithms:
        try:
            scoped = (algorithm_overrides or {}).get(algorithm, [])
            configs += [(algorithm, s, runnable_config(document, [*overrides, *scoped, f"algorithm={algorithm}", f"seed={s}"]))
                        for s in seeds]
        except UserError as exc:
            if not skip_incompatible:
                raise
            announce(f"skipping {algorithm}: {exc}")
    planned = []
    for index, (algorithm, seed, config) in enumerate(configs, 1):
        run_dir = out / algorithm / f"seed{seed}"
        label = f"{label_prefix}[{index}/{len(configs)}] {algorithm} seed {seed}"
        finished = _finished_with(run_dir, config)
        if finished:
            announce(f"{label}: reusing {run_dir}")
        elif run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "config.yaml").is_file():
            raise UserError(f"{str(run_dir)!r} exists and is not a pfedlora run directory; choose another --out")
        planned.append(PlannedRun(algorithm, seed, config, run_dir, label, finished))
    return planned


def execute_runs(planned: Sequence[PlannedRun], runner: Runner = _default_runner,
                 announce: Callable[[str], None] = print, execution: ExecutionOptions | None = None) -> None:
    """Run the unfinished ``planned`` runs: one after another through ``runner`` (``--jobs 1``), or
    at once on local processes or Ray (``execution``); the outputs are the same either way."""
    from pfedlora.federation.jobs import RunJob, execute

    execution = execution or ExecutionOptions()
    pending = [p for p in planned if not p.finished]
    if not pending:
        return
    if execution.parallel:
        where = (f"Ray ({execution.ray_address or 'a local instance'})" if execution.executor == "ray"
                 else f"{execution.jobs} processes")
        announce(f"running {len(pending)} runs on {where}")

    def serial(job: RunJob) -> None:
        announce(f"{job.label}: running -> {job.run_dir}")
        runner(job.config, job.run_dir, job.label)

    execute([RunJob(p.config, p.run_dir, p.label) for p in pending], workers=execution.jobs,
            executor=execution.executor, ray_address=execution.ray_address,
            ray_shared_fs=execution.ray_shared_fs, serial=serial)


def run_all(document: dict[str, Any], overrides: Sequence[str], algorithms: Sequence[str], seeds: Sequence[int],
            out: Path, runner: Runner = _default_runner,
            announce: Callable[[str], None] = print, skip_incompatible: bool = False,
            algorithm_overrides: dict[str, list[str]] | None = None,
            execution: ExecutionOptions | None = None) -> list[RunRecord]:
    """Run every (algorithm, seed) under ``out`` (see :func:`plan_runs`); reuse runs already
    finished with the same config; return the records in (algorithm, seed) order."""
    planned = plan_runs(document, overrides, algorithms, seeds, out, announce=announce,
                        skip_incompatible=skip_incompatible, algorithm_overrides=algorithm_overrides)
    group_planned_runs(planned, out, "compare", announce)  # tracking: one experiment, one parent run
    execute_runs(planned, runner=runner, announce=announce, execution=execution)
    return [load_run(p.run_dir) for p in planned]


def _finished_with(run_dir: Path, config: Config) -> bool:
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    if not (run_dir / "summary.json").is_file() or not isinstance(saved, dict):
        return False
    saved = _same_data_path(saved, config.to_dict())
    if saved == config.to_dict():
        return True
    # other algorithms' sections (older configs write several) cannot change this run: a changed
    # default in one of them must not make every other algorithm's finished run look different
    current = _own_sections(config.to_dict(), config.algorithm)
    if _own_sections(saved, config.algorithm) == current:
        return True
    # a run written before a key existed: its config read with today's defaults. Every key added
    # since keeps the earlier behaviour as its default (the project's rule for new settings), so
    # such a run is the run this config would make now; where a default changed later, the
    # missing key reads as its former default.
    try:
        return _own_sections(build_config(with_former_defaults(saved)).to_dict(), config.algorithm) == current
    except UserError:
        return False


def _same_data_path(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with its dataset path written as ``current``'s when both name the same file (an
    absolute path and a relative one): the run read the same data."""
    before, now = (saved.get("dataset") or {}).get("path"), (current.get("dataset") or {}).get("path")
    if not before or not now or before == now:
        return saved
    try:
        same = Path(before).resolve(strict=True) == Path(now).resolve(strict=True)
    except (OSError, RuntimeError):
        return saved
    return {**saved, "dataset": {**saved["dataset"], "path": now}} if same else saved


def _own_sections(document: dict[str, Any], algorithm: str) -> dict[str, Any]:
    """``document`` without the settings sections of algorithms other than ``algorithm``."""
    others = {section for section, owner in section_owners().items() if owner != algorithm}
    return {key: value for key, value in document.items() if key not in others}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _ratio(baseline: float | None, value: float | None) -> float | None:
    if baseline is None or value is None or baseline == 0:  # against a cost of 0 no ratio means anything
        return None
    return math.inf if value == 0 else baseline / value


def _costs(summary: dict[str, Any]) -> dict[str, float]:
    rounds = max(int(summary.get("client_rounds", 0)), 1)
    up = summary.get("total_up_bytes", 0) / rounds
    down = summary.get("total_down_bytes", 0) / rounds
    return {
        "train_flops_per_client_round": summary.get("total_train_flops", 0) / rounds,
        "up_bytes_per_client_round": up,
        "down_bytes_per_client_round": down,
        "comm_bytes_per_client_round": up + down,
        "server_flops_per_round": summary.get("server_flops_per_round", 0.0),
    }


def _diagnostic_names(records: Sequence[RunRecord]) -> list[str]:
    """The names of the evaluation metrics the runs report (summary.json ``evaluation_metrics``)."""
    return list(dict.fromkeys(name for r in records for name in r.summary.get("evaluation_metrics", [])))


def _mean_of(values: list[float | None]) -> float | None:
    return statistics.fmean(values) if values and all(v is not None for v in values) else None


DEFAULT_REFERENCE = "standalone"
# (row key prefix, what is differenced) of the paired differences against the reference
PAIRED = (("final_diff", "final accuracy"), ("best_diff", "best accuracy"), ("rounds_to_target_diff", "rounds to target"))
PAIRED_FIELDS = ("mean", "ci_low", "ci_high", "bootstrap_low", "bootstrap_high", "n", "excludes_zero")


def choose_reference(algorithms: Sequence[str], reference: str | None = None) -> str:
    """``reference`` if it is among ``algorithms`` (UserError otherwise); by default ``standalone``
    where it ran, else the first algorithm."""
    if reference is None:
        return DEFAULT_REFERENCE if DEFAULT_REFERENCE in algorithms else algorithms[0]
    if reference not in algorithms:
        raise UserError(f"--reference {reference!r} is not among the compared algorithms; choose one of "
                        f"{', '.join(algorithms)}")
    return reference


def paired_columns(prefix: str, difference: PairedDifference | None) -> dict[str, Any]:
    """``{prefix}_mean``, ``_ci_low``, ``_ci_high``, ``_bootstrap_low``, ``_bootstrap_high``, ``_n``,
    ``_excludes_zero`` of one paired difference (None throughout when there is none)."""
    if difference is None:
        return {f"{prefix}_{field}": None for field in PAIRED_FIELDS}
    return {f"{prefix}_{field}": getattr(difference, field) for field in PAIRED_FIELDS}


def _paired_rows(by_algorithm: dict[str, list[RunRecord]], rows: dict[str, dict[str, Any]], reference: str,
                 target_accuracy: float) -> None:
    """Each row's paired differences against ``reference`` (its own row: none)."""
    def per_seed(runs: list[RunRecord], value) -> dict[int, float]:
        return {r.seed: v for r in runs if (v := value(r)) is not None}

    def rounds(record: RunRecord) -> float | None:
        hit = time_to_target(record.history, target_accuracy)
        return None if hit is None else hit["round"]

    values = {"final_diff": lambda r: r.summary["final_accuracy"], "best_diff": lambda r: r.summary["best_accuracy"],
              "rounds_to_target_diff": rounds}
    for algorithm, runs in by_algorithm.items():
        for prefix, _ in PAIRED:
            difference = None
            if algorithm != reference:
                ours, theirs = per_seed(runs, values[prefix]), per_seed(by_algorithm[reference], values[prefix])
                if set(ours) & set(theirs):
                    difference = paired_difference(theirs, ours)
            rows[algorithm] |= paired_columns(prefix, difference)
            rows[algorithm][f"{prefix}_object"] = difference


def summarize_comparison(records: Sequence[RunRecord], *, target_accuracy: float | None = None,
                         target_fraction: float = 0.9, reference: str | None = None) -> dict[str, Any]:
    """The comparison table (one row per algorithm, in the order first seen), its target and the
    paired differences against ``reference`` (see :func:`choose_reference`)."""
    by_algorithm: dict[str, list[RunRecord]] = {}
    for record in records:
        by_algorithm.setdefault(record.algorithm, []).append(record)
    paired_with = choose_reference(list(by_algorithm), reference)
    rows: dict[str, dict[str, Any]] = {}
    for algorithm, runs in by_algorithm.items():
        final_mean, final_std = _mean_std([r.summary["final_accuracy"] for r in runs])
        best_mean, best_std = _mean_std([r.summary["best_accuracy"] for r in runs])
        costs = [_costs(r.summary) for r in runs]
        rows[algorithm] = {
            "algorithm": algorithm,
            "seeds": " ".join(str(r.seed) for r in runs),
            "final_acc_mean": final_mean, "final_acc_std": final_std,
            "best_acc_mean": best_mean, "best_acc_std": best_std,
            **{key: statistics.fmean(c[key] for c in costs) for key in costs[0]},
            # the algorithm's evaluation_metrics at the last round (e.g. pFedLoRA's adapter_share), mean over seeds
            **{key: _mean_of([r.summary.get(f"final_{key}") for r in runs]) for key in _diagnostic_names(runs)},
        }
    baselines = [name for name in rows if name != PROPOSED]
    best_baseline = max(baselines, key=lambda name: rows[name]["final_acc_mean"]) if baselines else None
    if target_accuracy is None:
        target_of = best_baseline or max(rows, key=lambda name: rows[name]["final_acc_mean"])
        target_accuracy = target_fraction * rows[target_of]["final_acc_mean"]
        target_rule = f"{target_fraction:g} × final accuracy of {target_of}"
    else:
        target_rule = "absolute"

    for algorithm, runs in by_algorithm.items():
        row = rows[algorithm]
        reached = [hit for hit in (time_to_target(r.history, target_accuracy) for r in runs) if hit is not None]
        row["target_reached"] = f"{len(reached)}/{len(runs)}"
        row["rounds_to_target"] = statistics.fmean(h["round"] for h in reached) if reached else None
        row["flops_to_target"] = statistics.fmean(h["flops"] for h in reached) if reached else None
        row["bytes_to_target"] = statistics.fmean(h["bytes"] for h in reached) if reached else None

    for row in rows.values():
        base = rows[best_baseline] if best_baseline is not None else None
        row["is_best_baseline"] = row["algorithm"] == best_baseline
        row["delta_to_best_baseline"] = row["final_acc_mean"] - base["final_acc_mean"] if base else None
        for factor, cost in (("compute_reduction_x", "train_flops_per_client_round"),
                             ("comm_reduction_x", "comm_bytes_per_client_round"),
                             ("flops_to_target_reduction_x", "flops_to_target"),
                             ("bytes_to_target_reduction_x", "bytes_to_target")):
            row[factor] = _ratio(base[cost], row[cost]) if base else None
    _paired_rows(by_algorithm, rows, paired_with, target_accuracy)
    diagnostics = _diagnostic_names(records)
    for row in rows.values():  # None where an algorithm does not report one
        row |= {name: row.get(name) for name in diagnostics}
    return {"rows": list(rows.values()), "best_baseline": best_baseline, "reference": paired_with,
            "target_accuracy": target_accuracy, "target_rule": target_rule, "diagnostics": diagnostics}


CSV_COLUMNS = [
    "algorithm", "seeds", "final_acc_mean", "final_acc_std", "best_acc_mean", "best_acc_std",
    "delta_to_best_baseline", "train_flops_per_client_round", "up_bytes_per_client_round",
    "down_bytes_per_client_round", "comm_bytes_per_client_round", "server_flops_per_round",
    "target_reached", "rounds_to_target", "flops_to_target", "bytes_to_target",
    "compute_reduction_x", "comm_reduction_x", "flops_to_target_reduction_x", "bytes_to_target_reduction_x",
    "is_best_baseline", "reference",
    *(f"{prefix}_{field}" for prefix, _ in PAIRED for field in PAIRED_FIELDS),
]


def write_comparison_csv(table: dict[str, Any], path: Path) -> None:
    """One row per algorithm; after the fixed columns, one per evaluation metric an algorithm reports
    (empty for the others)."""
    diagnostics = table.get("diagnostics", [])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*CSV_COLUMNS, "target_accuracy", *diagnostics])
        writer.writeheader()
        for row in table["rows"]:
            row = {**row, "reference": table["reference"]}
            writer.writerow({**{k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS},
                             "target_accuracy": table["target_accuracy"],
                             **{k: ("" if row.get(k) is None else row[k]) for k in diagnostics}})


def _factor(value: float | None) -> str:
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else f"{value:.2f}×"


def mean_std_text(mean: float, std: float, seeds: int | None) -> str:
    """``81.43 ± 0.57`` over several seeds; the value alone for one seed (a std of 0.00 would claim a
    spread that was never measured). ``seeds`` None: not known, the spread is shown."""
    return f"{mean:.2f}" if seeds is not None and seeds <= 1 else f"{mean:.2f} ± {std:.2f}"


def comparison_markdown(table: dict[str, Any], title: str = "Comparison") -> str:
    best = table["best_baseline"]
    lines = [
        f"# {title}", "",
        f"Best baseline: **{best}** (highest mean final accuracy among the compared algorithms other than "
        f"{PROPOSED})." if best else f"Only {PROPOSED} compared: no baseline, so no Δ and no reduction factors.",
        f"Target accuracy: **{table['target_accuracy']:.2f}%** ({table['target_rule']}).", "",
        "Accuracy in percent, mean ± std over seeds (the value alone for one seed). Per client per round: client training FLOPs and "
        "uploaded + downloaded bytes, divided by the number of client-rounds. To target: cumulative "
        "FLOPs (training + server) and bytes (up + down) when the mean accuracy first reaches the target, "
        "mean over the seeds that reach it. × = best baseline's cost / the algorithm's cost (– where that cost is 0).", "",
        "| algorithm | final acc | best acc | Δ | compute / client / round | comm / client / round "
        "| rounds to target | FLOPs to target | bytes to target | compute × | comm × | FLOPs-to-target × "
        "| bytes-to-target × |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        name = f"**{row['algorithm']}**" if row["algorithm"] == PROPOSED else row["algorithm"]
        if row["is_best_baseline"]:
            name += " (best baseline)"
        delta = "–" if row["delta_to_best_baseline"] is None else f"{row['delta_to_best_baseline']:+.2f}"
        rounds = "–" if row["rounds_to_target"] is None else f"{row['rounds_to_target']:.1f}"
        rounds += f" ({row['target_reached']})"
        seeds = len(str(row["seeds"]).split())
        lines.append(
            f"| {name} | {mean_std_text(row['final_acc_mean'], row['final_acc_std'], seeds)} "
            f"| {mean_std_text(row['best_acc_mean'], row['best_acc_std'], seeds)} | {delta} "
            f"| {human(row['train_flops_per_client_round'], 'FLOP')} | {human(row['comm_bytes_per_client_round'], 'B')} "
            f"| {rounds} | {human(row['flops_to_target'], 'FLOP')} | {human(row['bytes_to_target'], 'B')} "
            f"| {_factor(row['compute_reduction_x'])} | {_factor(row['comm_reduction_x'])} "
            f"| {_factor(row['flops_to_target_reduction_x'])} | {_factor(row['bytes_to_target_reduction_x'])} |"
        )
    if table.get("diagnostics"):
        names = table["diagnostics"]
        lines += ["", "At the last round, as the algorithms report them (mean over seeds; – where an algorithm "
                  "does not), e.g. pFedLoRA's adapter_share: ||mu A(x)|| / ||F_k(x)|| on the evaluation split, "
                  "and adapter_flips: predictions the adapter changes, both in percent:", "",
                  "| algorithm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row in table["rows"]:
            cells = ["–" if row.get(name) is None else f"{row[name]:.2f}" for name in names]
            lines.append(f"| {row['algorithm']} | " + " | ".join(cells) + " |")
    paired = paired_markdown(table)
    lines += ["", *paired] if paired else []
    lines += ["", "Numbers: `comparison.csv`. Plots: [report.md](report.md).", ""]
    return "\n".join(lines)


def difference_text(difference: PairedDifference | None) -> str:
    """``+1.33 [-2.46, +5.13] (n=3)``; – where there is none."""
    return "–" if difference is None else difference.text()


def verdict_text(difference: PairedDifference | None, reference: str) -> str:
    """``**gain**`` / ``**loss**`` where the 95% interval excludes 0, else ``indistinguishable (n seeds)``."""
    if difference is None:
        return "–"
    if difference.excludes_zero:
        return f"**{difference.verdict}**"
    return f"indistinguishable from {reference} with {difference.n} seed{'s' if difference.n != 1 else ''}"


def bootstrap_text(difference: PairedDifference | None) -> str:
    if difference is None or difference.bootstrap_low is None:
        return "–"
    return f"[{difference.bootstrap_low:+.2f}, {difference.bootstrap_high:+.2f}]"


def paired_markdown(table: dict[str, Any]) -> list[str]:
    """The paired-differences table against the table's reference."""
    reference = table.get("reference")
    if reference is None or len(table["rows"]) < 2:  # nothing to pair
        return []
    lines = [f"## Paired differences against {reference}", "",
             f"Per seed, the algorithm's value − {reference}'s on the same seed (same partitions and data): "
             "accuracy in percentage points, rounds to target in rounds (over the seeds where both reach it). "
             "Mean [95% Student t interval] (n seeds); bootstrap: the percentile bootstrap 95% interval of the final "
             f"accuracy difference (from {BOOTSTRAP_MIN_SEEDS} seeds). A gain or loss only where the t interval "
             "excludes 0.", "",
             f"| algorithm | final acc − {reference} | verdict | bootstrap | best acc − {reference} "
             f"| rounds to target − {reference} |",
             "|---|---|---|---|---|---|"]
    for row in table["rows"]:
        if row["algorithm"] == reference:
            continue
        final = row.get("final_diff_object")
        lines.append(f"| {row['algorithm']} | {difference_text(final)} | {verdict_text(final, reference)} "
                     f"| {bootstrap_text(final)} | {difference_text(row.get('best_diff_object'))} "
                     f"| {difference_text(row.get('rounds_to_target_diff_object'))} |")
    return lines


def compare(document: dict[str, Any], overrides: Sequence[str], algorithms: Sequence[str], seeds: Sequence[int],
            out: str | Path, *, target_accuracy: float | None = None, target_fraction: float = 0.9,
            runner: Runner = _default_runner, announce: Callable[[str], None] = print,
            skip_incompatible: bool = False, algorithm_overrides: dict[str, list[str]] | None = None,
            execution: ExecutionOptions | None = None, reference: str | None = None) -> dict[str, Any]:
    """Run, tabulate and report; writes comparison.md, comparison.csv and report.md under ``out``.

    ``reference``: the algorithm the paired differences are taken against (see :func:`choose_reference`).
    """
    from pfedlora.experiments.report import write_report

    if not 0 < target_fraction <= 1:
        raise UserError(f"--target-fraction must be in (0, 1], got {target_fraction}")
    if reference is not None:  # checked before anything runs
        choose_reference(list(algorithms), reference)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    records = run_all(document, overrides, algorithms, seeds, out, runner=runner, announce=announce,
                      skip_incompatible=skip_incompatible, algorithm_overrides=algorithm_overrides,
                      execution=execution)
    if target_accuracy is None:  # the config's target_accuracy, if any
        target_accuracy = build_config(document, list(overrides)).target_accuracy
    table = summarize_comparison(records, target_accuracy=target_accuracy, target_fraction=target_fraction,
                                 reference=reference)
    write_comparison_csv(table, out / "comparison.csv")
    write_atomic(out / "comparison.md", comparison_markdown(table))
    write_report([r.path for r in records], out, title="Comparison runs")
    finish_group(out, [out / "comparison.csv", out / "comparison.md", *sorted(out.glob("*.png"))], announce)
    return table
