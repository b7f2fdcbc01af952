"""One SGD training step of one local model, in the variants the engine chose between.

    python benchmarks/train_step.py [--model cnn1] [--batch 64] [--steps 30] [--threads 1] [--compile]

Variants (same initial weights, same batch, interleaved step by step so load changes hit all alike):

* ``textbook``: ReLU then torch's ``nn.MaxPool2d`` (what peers' model zoos do);
* ``engine``: pfedlora's models (exact ``MaxPool2x2``, ReLU after the pool): the default;
* ``fused_sgd``: the engine with ``torch.optim.SGD(fused=True)``;
* ``channels_last`` / ``bf16``: the engine's opt-in layouts/precisions;
* ``compiled`` (with ``--compile``): the engine's loss under ``torch.compile`` (first step compiles).

Prints a line per variant: median ms per step, GFLOP/s (the step's counted FLOPs), and whether the
weights after all steps equal the textbook run's bit for bit; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pfedlora.metrics.flops import counting  # noqa: E402
from pfedlora.models.cnn import CNN, CNN_SPECS  # noqa: E402


def textbook(model: CNN) -> CNN:
    """``model`` computing conv -> ReLU -> ``nn.MaxPool2d`` (the usual order and layer)."""
    model.pool = nn.MaxPool2d(2)

    def represent(x: torch.Tensor) -> torch.Tensor:
        x = model.pool(torch.relu(model.conv1(x)))
        x = model.pool(torch.relu(model.conv2(x)))
        return torch.relu(model.fc2(torch.relu(model.fc1(torch.flatten(x, 1)))))

    model.represent = represent  # type: ignore[method-assign]
    return model


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, fused: bool = False, bf16: bool = False,
              compiled: bool = False) -> Callable[[], None]:
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, fused=fused or None)

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return F.cross_entropy(model(xb), yb)

    loss_call = torch.compile(loss_fn) if compiled else loss_fn

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_call(x, y).backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn1", choices=list(CNN_SPECS), help="a model of the CNN family")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = CNN(CNN_SPECS[args.model], 3, 10)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    with counting() as counter:
        F.cross_entropy(base(x), y).backward()
    step_gflop = counter.get_total_flops() / 1e9
    base.zero_grad(set_to_none=True)

    models = {"textbook": textbook(copy.deepcopy(base)), "engine": copy.deepcopy(base), "fused_sgd": copy.deepcopy(base),
              "channels_last": copy.deepcopy(base).to(memory_format=torch.channels_last), "bf16": copy.deepcopy(base)}
    steps = {name: make_step(model, x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x, y,
                             fused=name == "fused_sgd", bf16=name == "bf16") for name, model in models.items()}
    first_step_s: dict[str, float] = {}
    if args.compile:
        models["compiled"] = copy.deepcopy(base)
        steps["compiled"] = make_step(models["compiled"], x, y, compiled=True)
    for name, step in steps.items():  # warm-up (and compilation) outside the timing
        started = time.perf_counter()
        step()
        first_step_s[name] = time.perf_counter() - started
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)

    reference = dict(models["textbook"].named_parameters())
    out: dict = {"model": args.model, "batch": args.batch, "threads": args.threads, "step_gflop": round(step_gflop, 3)}
    for name in steps:
        ms = statistics.median(times[name]) * 1e3
        params = dict(models[name].named_parameters())
        equal = all(torch.equal(params[key], reference[key]) for key in reference)
        out[name] = {"ms": round(ms, 2), "gflops": round(step_gflop / ms * 1e3, 1), "equal_to_textbook": equal,
                     "first_step_s": round(first_step_s[name], 2)}
        print(f"{name:14s} {ms:8.2f} ms/step  {step_gflop / ms * 1e3:6.1f} GFLOP/s  "
              f"weights equal to textbook: {equal}  first step {first_step_s[name]:.2f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
