"""Simulation speed: the engine against the plain sequential reference loop, in one invocation.

    python benchmarks/engine.py --workload W1|W2|W3 [--rounds N] [--workers auto|N] [--threads N] [--bf16] [--channels-last]
                                [--reference | --no-reference] [--augment] [--set KEY=VALUE ...]

W1: CIFAR-10 (the shared archive), 20 clients, fraction 0.5, cnn1..cnn5, pFedLoRA, 1 local + 1 adapter
epoch, batch 64. W2: the same with batch 512. W3: 1,000 clients, fraction 0.01 (rounds per second
and peak RSS; client states in the on-disk store). Engine and reference rounds are interleaved
(engine round r, reference round r, ...) so a change in the machine's load hits both alike.
``--reference`` times only the reference loop, ``--no-reference`` only the engine.

Prints the figures and, as its last line, one JSON object: workload, device, samples_per_s
(client training samples per second), reference_samples_per_s, speedup, achieved_gflops (FLOPs
the engine executed per second), ceiling_gflops (this machine's fp32 2048x2048 matrix-multiply
rate with the same thread count, measured in this run), ceiling_fraction, seconds_per_round,
rounds_per_s, peak_rss_mb, accuracies after the timed rounds, load averages before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pfedlora.config import build_config  # noqa: E402
from pfedlora.federation.simulation import ClientStore, Federation, evaluate_clients, resolve_device, run_round  # noqa: E402
from pfedlora.metrics import flops as flop_count  # noqa: E402
from proc_tree import tree_cpu_s  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
POOL = ["cnn1", "cnn2", "cnn3", "cnn4", "cnn5"]


def workload(name: str, data: str) -> tuple[dict, int]:
    """(config document, default timed rounds) of a named workload."""
    base = {"algorithm": "pfedlora", "seed": 0, "dataset": {"name": "cifar10", "path": data},
            "model_pool": POOL, "train": {"local_epochs": 1, "adapter_epochs": 1}}
    if name == "W1":
        return {**base, "num_clients": 20, "fraction": 0.5, "train": {**base["train"], "batch_size": 64}}, 2
    if name == "W2":
        return {**base, "num_clients": 20, "fraction": 0.5, "train": {**base["train"], "batch_size": 512}}, 2
    if name == "W3":
        return {**base, "num_clients": 1000, "fraction": 0.01, "train": {**base["train"], "batch_size": 64},
                "engine": {"client_store": "disk"}}, 5
    raise SystemExit(f"unknown workload {name!r}; valid: W1, W2, W3")


def matmul_ceiling(size: int = 2048, repeats: int = 7) -> float:
    """fp32 GFLOP/s of a size x size matrix product (median of ``repeats``) using every core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(CORES)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            rates.append(2 * size**3 / (time.perf_counter() - started) / 1e9)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(rates)


def augmentation_seconds(federation: Federation, rounds: int) -> float:
    """Seconds ``dataset.augment`` adds per round: crop + flip of every training batch of the selected
    clients (1 local + 1 adapter epoch = each sample twice), timed on its own."""
    from pfedlora.data.augment import random_crop_flip
    from pfedlora.federation.simulation import sample_clients

    config, total = federation.config, 0.0
    epochs = config.train.local_epochs + config.train.adapter_epochs
    for round_index in range(1, rounds + 1):
        for client_id in sample_clients(config, round_index):
            x, generator = federation.clients[client_id].train_x, torch.Generator().manual_seed(client_id)
            started = time.perf_counter()
            for _ in range(epochs):
                for start in range(0, int(x.shape[0]), config.train.batch_size):
                    random_crop_flip(x[start : start + config.train.batch_size], generator)
            total += time.perf_counter() - started
    return total / rounds


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its forked workers, finished or not (a round
    does not wait for its workers' exit)."""
    return tree_cpu_s()


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak resident set size in MB (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", required=True, choices=["W1", "W2", "W3"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--workers", default="auto", help="engine.workers (auto = cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process (default: torch's)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--reference", action="store_true", help="time only the reference loop")
    mode.add_argument("--no-reference", action="store_true", help="time only the engine")
    parser.add_argument("--augment", action="store_true", help="dataset.augment=true (engine only)")
    parser.add_argument("--bf16", action="store_true", help="train.precision=bf16 for the engine (the reference stays fp32)")
    parser.add_argument("--channels-last", action="store_true",
                        help="engine.channels_last=true (faster convolutions, results drift from the reference)")
    parser.add_argument("--no-eval", action="store_true", help="skip the accuracy evaluation after the timed rounds")
    parser.add_argument("--data", default=str(CIFAR))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    document, rounds = workload(args.workload, args.data)
    rounds = args.rounds or rounds
    overrides = [f"engine.workers={args.workers}", f"engine.channels_last={str(args.channels_last).lower()}", *args.set]
    if args.augment:
        overrides.append("dataset.augment=true")
    if args.bf16:
        overrides.append("train.precision=bf16")
    config = build_config(document, overrides)
    # the reference: the same federation, the usual way (fp32, contiguous layout, one process)
    reference_config = build_config(document, ["engine.channels_last=false", "train.precision=fp32", *args.set])
    run_engine = not args.reference
    run_reference = not args.no_reference and not args.augment and args.workload != "W3"
    if args.reference and (args.augment or args.workload == "W3"):
        raise SystemExit("the reference loop runs W1/W2 without augmentation")

    ceiling = [matmul_ceiling()]
    started = time.perf_counter()
    federation = Federation.build(config)
    print(f"device {resolve_device(config.device)}, torch threads {torch.get_num_threads()}, "
          f"engine.workers {config.engine.resolved_workers()}, load {load_before}")
    print(f"build (data + partition): {time.perf_counter() - started:.1f} s")
    reference = None
    if run_reference:
        from reference import ReferenceFederation

        reference = ReferenceFederation(Federation.build(reference_config))
    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)

    engine_s, engine_samples, engine_flops, reference_s, reference_samples = [], 0, 0, [], 0
    engine_cpu, reference_cpu = 0.0, 0.0
    for round_index in range(1, rounds + 1):
        if run_engine:
            tick, cpu = time.perf_counter(), cpu_seconds()
            server_state, broadcast, result = run_round(federation, store, server_state, broadcast, round_index)
            engine_s.append(time.perf_counter() - tick)
            engine_cpu += cpu_seconds() - cpu
            engine_samples += sum(s.num_samples for stats in result.stats.values() for s in stats)
            engine_flops += sum(s.flops for stats in result.stats.values() for s in stats)
            print(f"engine    round {round_index}: {engine_s[-1]:.2f} s")
        if reference is not None:
            tick, cpu = time.perf_counter(), cpu_seconds()
            reference_samples += reference.round(round_index)
            reference_s.append(time.perf_counter() - tick)
            reference_cpu += cpu_seconds() - cpu
            print(f"reference round {round_index}: {reference_s[-1]:.2f} s")
    ceiling.append(matmul_ceiling())
    augment_s = augmentation_seconds(federation, rounds) if run_engine else None

    out: dict = {"workload": args.workload, "device": str(resolve_device(config.device)),
                 "torch_threads": torch.get_num_threads(), "workers": config.engine.resolved_workers(),
                 "augment": config.dataset.augment, "precision": config.train.precision,
                 "channels_last": config.engine.channels_last, "rounds": rounds, "num_clients": config.num_clients,
                 "batch_size": config.train.batch_size, "client_store": config.engine.client_store}
    ceiling_gflops = statistics.median(ceiling)
    out["ceiling_gflops"] = round(ceiling_gflops, 2)
    if run_engine:
        total = sum(engine_s)
        out["samples_per_s"] = round(engine_samples / total, 1)
        out["seconds_per_round"] = round(total / rounds, 3)
        out["rounds_per_s"] = round(rounds / total, 4)
        out["achieved_gflops"] = round(engine_flops / total / 1e9, 2)
        out["ceiling_fraction"] = round(engine_flops / total / 1e9 / ceiling_gflops, 3)
        out["engine_round_s"] = [round(t, 2) for t in engine_s]
        # per CPU second: what the machine's load does not change (parallelism gains only wall time)
        out["samples_per_cpu_s"] = round(engine_samples / engine_cpu, 1)
    if reference is not None:
        out["reference_samples_per_s"] = round(reference_samples / sum(reference_s), 1)
        out["reference_seconds_per_round"] = round(sum(reference_s) / rounds, 3)
        out["reference_round_s"] = [round(t, 2) for t in reference_s]
        out["reference_samples_per_cpu_s"] = round(reference_samples / reference_cpu, 1)
    if run_engine and reference is not None:
        out["speedup"] = round(out["samples_per_s"] / out["reference_samples_per_s"], 2)
    if not args.no_eval and args.workload != "W3":
        if run_engine:
            out["accuracy"] = round(float(np.mean(evaluate_clients(federation, store, broadcast))), 4)
        if reference is not None:
            out["reference_accuracy"] = round(float(np.mean(reference.evaluate())), 4)
        if run_engine and reference is not None:
            out["max_adapter_diff"] = max(float((broadcast[k] - v).abs().max())
                                          for k, v in reference.global_adapter.state_dict().items())
    if augment_s is not None:
        out["augment_s_per_round"] = round(augment_s, 3)
        if run_engine:
            out["augment_fraction_of_round"] = round(augment_s / (sum(engine_s) / rounds), 3)
    own, child = peak_rss_mb()
    out["peak_rss_mb"] = round(max(own, child), 1)
    out["peak_rss_main_mb"], out["peak_rss_worker_mb"] = round(own, 1), round(child, 1)
    out["load_before"], out["load_after"] = [round(v, 2) for v in load_before], [round(v, 2) for v in os.getloadavg()]
    for key, value in out.items():
        print(f"{key}: {value}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
