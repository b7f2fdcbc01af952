"""``pfedlora run | ...``: the command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pfedlora.errors import RunInterrupted, UserError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: the quickstart)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set adapter.rank=8 (repeatable)")


def _add_execution_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", default="1", metavar="N|auto",
                        help="independent runs at once, each in its own process with one torch thread "
                             "(auto: one per core; default 1: one after another). Results are identical")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local processes (default) or Ray tasks (pip install 'pfedlora[ray]')")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="Ray cluster to submit to (e.g. ray://HEAD:10001); default: start a local Ray instance")
    parser.add_argument("--ray-shared-fs", action="store_true",
                        help="Ray tasks write their run directories themselves (OUT is on a filesystem every node "
                             "sees); default: each task returns its run directory's files and the driver writes them")


def _execution(args: argparse.Namespace):
    from pfedlora.federation.jobs import resolve_jobs
    from pfedlora.experiments.compare import ExecutionOptions

    if args.executor != "ray" and (args.ray_address or args.ray_shared_fs):
        raise UserError("--ray-address and --ray-shared-fs need --executor ray")
    return ExecutionOptions(jobs=resolve_jobs(args.jobs), executor=args.executor, ray_address=args.ray_address,
                            ray_shared_fs=args.ray_shared_fs)


def _default_out(prefix: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}"


def _progress_bar(total: int, description: str):
    """A progress display for a run of ``total`` rounds: a tqdm bar on a terminal; otherwise (output
    piped to ``tee``, a file, a CI log) one line per evaluated round on stdout, so logs show progress."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="round", dynamic_ncols=True, file=sys.stderr,
               disable=None)
    if not bar.disable:
        def update(round_index: int, rounds: int, row: dict) -> None:
            if row:
                bar.set_postfix(acc=f"{row['mean_acc']:.2f}%")
            bar.update(round_index - bar.n)  # a resumed run starts past 0

        return bar, update

    from pfedlora.federation.jobs import format_duration

    def update_lines(round_index: int, rounds: int, row: dict) -> None:
        if not row:
            return
        # wall_s counts the whole run, an earlier interrupted part included
        elapsed = float(row.get("wall_s", float("nan")))
        eta = elapsed / round_index * (rounds - round_index) if round_index > 0 else float("nan")
        accuracy = row.get("mean_acc")
        shown = f"{accuracy:.2f}%" if isinstance(accuracy, (int, float)) and accuracy == accuracy else "n/a"
        print(f"{description}: round {round_index}/{rounds}  acc {shown}  elapsed {format_duration(elapsed)}  "
              f"ETA {format_duration(eta)}", flush=True)

    return bar, update_lines


def _run_with_progress(config, run_dir: Path, label: str) -> dict:
    """One run of a comparison or sweep, with a progress bar labelled ``label``."""
    from pfedlora.federation.simulation import run_or_resume

    bar, update = _progress_bar(config.rounds, label)
    try:  # an interrupted run of the same config continues from its checkpoint
        return run_or_resume(config, run_dir, progress=update, log=lambda _: None)
    finally:
        bar.close()


def cmd_run(args: argparse.Namespace) -> int:
    # the config first, the runtime (torch, the data loaders: seconds of imports) only once it is valid
    from pfedlora.config import load_config

    if args.resume is not None:
        from pfedlora.federation.simulation import load_resumable

        # the run's own config.yaml is the config; anything else could silently change the results
        given = [flag for flag, value in (("--config", args.config), ("--set", args.overrides),
                                          ("--out", args.out), ("--overwrite", args.overwrite)) if value]
        if given:
            raise UserError(f"--resume uses RUN_DIR/config.yaml and writes into RUN_DIR; "
                            f"it cannot be combined with {', '.join(given)}")
        out = Path(args.resume)
        config, checkpoint = load_resumable(out)
        done = checkpoint["round"] if checkpoint is not None else 0
        print(f"pfedlora run --resume: {config.algorithm} on {config.dataset.name}, round {done + 1} "
              f"of {config.rounds} -> {out}")
    else:
        config = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else _default_out(f"{config.algorithm}-{config.dataset.name}")
        print(f"pfedlora run: {config.algorithm} on {config.dataset.name}, {config.num_clients} clients, "
              f"{config.rounds} rounds -> {out}")
    from pfedlora.federation.simulation import resume, run

    bar, update = _progress_bar(config.rounds, config.algorithm)
    try:
        if args.resume is not None:
            summary = resume(out, progress=update, log=bar.write)
        else:
            summary = run(config, out, overwrite=args.overwrite, progress=update, log=bar.write)
    finally:
        bar.close()
    print(format_summary(summary))
    print(f"results: {out}")
    return 0


def format_summary(summary: dict) -> str:
    rows = [
        ("algorithm", summary["algorithm"]),
        ("dataset", summary["dataset"]),
        ("clients / rounds", f"{summary['num_clients']} / {summary['rounds']}"),
        ("final accuracy", f"{summary['final_accuracy']:.2f}% (std over clients {summary['final_std']:.2f})"),
        ("best accuracy", f"{summary['best_accuracy']:.2f}% (round {summary['best_round']})"),
        ("wall time", f"{summary['wall_seconds']:.1f} s"),
    ]
    if "adapter_parameters" in summary:
        rows.append(("adapter parameters", f"{summary['adapter_parameters']:,}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def cmd_compare(args: argparse.Namespace) -> int:
    import copy

    from pfedlora.config import QUICKSTART, load_document
    from pfedlora.experiments.compare import (
        compare,
        comparison_markdown,
        parse_algorithm_overrides,
        resolve_algorithms,
        resolve_seeds,
    )

    document = load_document(args.config) if args.config else copy.deepcopy(QUICKSTART)
    execution = _execution(args)
    algorithm_overrides = parse_algorithm_overrides(args.set_for)
    algorithms = resolve_algorithms(args.algorithms)
    seeds = resolve_seeds(args.seeds)
    out = Path(args.out) if args.out else _default_out("compare")
    print(f"pfedlora compare: {', '.join(algorithms)} x seeds {', '.join(map(str, seeds))} -> {out}")

    table = compare(document, args.overrides, algorithms, seeds, out, target_accuracy=args.target,
                    target_fraction=args.target_fraction, runner=_run_with_progress,
                    skip_incompatible=args.algorithms.strip() == "all", algorithm_overrides=algorithm_overrides,
                    execution=execution, reference=args.reference)
    print(comparison_markdown(table))
    print(f"results: {out / 'comparison.md'}, {out / 'comparison.csv'}, {out / 'report.md'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import copy

    from pfedlora.config import QUICKSTART, load_document
    from pfedlora.experiments.compare import resolve_algorithms, resolve_seeds
    from pfedlora.experiments.sweep import aggregate_markdown, sweep, sweep_table

    document = load_document(args.config) if args.config else copy.deepcopy(QUICKSTART)
    execution = _execution(args)
    overrides = list(args.overrides)  # --algorithms / --seeds replace the config's sweep section's
    if args.algorithms is not None:
        algorithms = "all" if args.algorithms.strip() == "all" else resolve_algorithms(args.algorithms)
        overrides.append(f"sweep.algorithms={json.dumps(algorithms)}")
    if args.seeds is not None:
        overrides.append(f"sweep.seeds={json.dumps(resolve_seeds(args.seeds))}")
    out = Path(args.out) if args.out else _default_out("sweep")
    print(f"pfedlora sweep -> {out}")

    result = sweep(document, overrides, out, grid_overrides=args.grid, runner=_run_with_progress, execution=execution,
                   reference=args.reference)
    print(sweep_table(result["rows"], result["settings"]))
    print("\n".join(aggregate_markdown(result["aggregates"], result["reference"])))
    paths = result["paths"]
    print(f"results: {paths['markdown']}, {paths['csv']}, {paths['report']}, {', '.join(map(str, paths['plots']))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pfedlora.experiments.report import write_report

    out = Path(args.out) if args.out else (Path(args.run_dirs[0]) if len(args.run_dirs) == 1 else _default_out("report"))
    report = write_report(args.run_dirs, out)
    if len(args.run_dirs) == 1 and Path(args.run_dirs[0]).resolve() == out.resolve():
        from pfedlora.metrics.tracking import attach_files

        attach_files(out, sorted(out.glob("*.png")))  # a tracked run gets its figures (tracking.json)
    print(f"report: {report}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pfedlora.export import export_clients

    for path in export_clients(args.run_dir, args.clients, args.out):
        document = json.loads(path.read_text())
        accuracy = document["run"]["accuracy"]
        shown = "n/a" if accuracy is None else f"{accuracy:.2f}%"
        print(f"client {document['client']}: {document['architecture']} ({document['algorithm']}), run accuracy "
              f"{shown} -> {path.with_suffix('.safetensors')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pfedlora import __version__

    parser = argparse.ArgumentParser(prog="pfedlora", description="Model-heterogeneous personalized FL with LoRA-style adapters.")
    parser.add_argument("--version", action="version", version=f"pfedlora {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="run one federation (no arguments: the digits quickstart)")
    _add_config_args(run_parser)
    run_parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<time>-<algorithm>-<dataset>)")
    run_parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty run directory")
    run_parser.add_argument("--resume", metavar="RUN_DIR",
                            help="continue an interrupted run from its last checkpoint (uses RUN_DIR/config.yaml)")
    run_parser.set_defaults(handler=cmd_run)

    compare_parser = commands.add_parser("compare", help="run several algorithms on identical partitions and seeds; tabulate accuracy and costs")
    _add_config_args(compare_parser)
    compare_parser.add_argument("--algorithms", default="all", metavar="A,B,C|all", help="algorithms to compare (default: all)")
    compare_parser.add_argument("--seeds", default="0,1,2", metavar="S,S", help="seeds (default: 0,1,2)")
    compare_parser.add_argument("--set-for", dest="set_for", action="append", default=[], metavar="ALGORITHM:KEY=VALUE",
                                help="override a config key for one algorithm only, e.g. standalone:train.lr=0.02 "
                                     "(each algorithm's tuned value of a shared key; repeatable)")
    compare_parser.add_argument("--out", metavar="DIR", help="output directory (default: runs/<time>-compare); finished runs in it are reused, interrupted ones continue from their checkpoint")
    compare_parser.add_argument("--target", type=float, metavar="ACC", help="target mean accuracy in percent (default: config target_accuracy, else --target-fraction)")
    compare_parser.add_argument("--reference", metavar="ALGORITHM",
                                help="the algorithm every other one is paired with, seed by seed (default: standalone where it runs, else the first)")
    compare_parser.add_argument("--target-fraction", type=float, default=0.9, metavar="F",
                                help="target = F x the best baseline's final accuracy (default: 0.9)")
    _add_execution_args(compare_parser)
    compare_parser.set_defaults(handler=cmd_compare)

    sweep_parser = commands.add_parser("sweep", help="run a grid of config values (the config's sweep section); tabulate and plot accuracy and costs against them")
    _add_config_args(sweep_parser)
    sweep_parser.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2]",
                              help="add or replace a grid key, e.g. --grid adapter.rank=[4,8,16] (repeatable)")
    sweep_parser.add_argument("--algorithms", metavar="A,B|all", help="algorithms (default: the config's sweep.algorithms, else pfedlora)")
    sweep_parser.add_argument("--seeds", metavar="S,S", help="seeds (default: the config's sweep.seeds, else 0)")
    sweep_parser.add_argument("--reference", metavar="ALGORITHM",
                              help="the algorithm every other one is paired with, seed by seed, at each point and over the grid (default: standalone where it runs, else the first)")
    sweep_parser.add_argument("--out", metavar="DIR", help="output directory (default: runs/<time>-sweep); finished runs in it are reused, interrupted ones continue from their checkpoint")
    _add_execution_args(sweep_parser)
    sweep_parser.set_defaults(handler=cmd_sweep)

    report_parser = commands.add_parser("report", help="plots and report.md for run directories")
    report_parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report_parser.add_argument("--out", metavar="DIR", help="output directory (default: the run directory when one is given, else runs/<time>-report)")
    report_parser.set_defaults(handler=cmd_report)

    export_parser = commands.add_parser("export", help="write chosen clients' personalized models (safetensors + JSON) "
                                                       "from a finished run; load with pfedlora.load_personalized")
    export_parser.add_argument("run_dir", metavar="RUN_DIR")
    export_parser.add_argument("--clients", required=True, metavar="K[,K...]|all", help="client ids, e.g. 0,3 or all")
    export_parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    export_parser.set_defaults(handler=cmd_export)

    init_parser = commands.add_parser("init", help="write a config to start from (the quickstart's, or one shipped "
                                                   "with pfedlora); without NAME: list them")
    init_parser.add_argument("name", nargs="?", metavar="NAME", help="quickstart, or a shipped config, e.g. cifar10, nlp/trec")
    init_parser.add_argument("--out", metavar="FILE", help="where to write it (default: ./<NAME>.yaml); an existing file is kept")
    init_parser.set_defaults(handler=cmd_init)
    return parser


def starter_configs() -> dict[str, Path | None]:
    """``quickstart`` (None: written from the code) and the configs shipped with pfedlora, by name
    (``cifar10``, ``nlp/trec``): the wheel carries the repository's configs/ as pfedlora/configs."""
    package = Path(__file__).resolve().parent / "configs"
    folder = package if package.is_dir() else Path(__file__).resolve().parents[2] / "configs"  # a source checkout
    shipped = {path.relative_to(folder).with_suffix("").as_posix(): path for path in sorted(folder.rglob("*.yaml"))} \
        if folder.is_dir() else {}
    return {"quickstart": None, **shipped}


def cmd_init(args: argparse.Namespace) -> int:
    configs = starter_configs()
    if args.name is None:
        print("configs to start from (pfedlora init NAME):")
        for name in configs:
            print(f"  {name}")
        return 0
    if args.name not in configs:
        raise UserError(f"init: unknown config {args.name!r}; valid: {', '.join(configs)}")
    out = Path(args.out) if args.out else Path(f"{Path(args.name).name}.yaml")
    if out.exists():
        raise UserError(f"init: {str(out)!r} exists; it is kept (choose another --out)")
    source = configs[args.name]
    if source is None:
        import yaml

        from pfedlora.config import QUICKSTART, build_config

        text = ("# the quickstart (pfedlora run without --config), every key at its value: "
                "pfedlora run --config " + str(out) + "\n" + yaml.safe_dump(build_config(QUICKSTART).to_dict(), sort_keys=False))
    else:
        text = source.read_text()
    from pfedlora.metrics.run_dir import write_atomic

    write_atomic(out, text)
    print(f"wrote {out}; run it with: pfedlora run --config {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"pfedlora: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunInterrupted as exc:
        print(f"pfedlora: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pfedlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
