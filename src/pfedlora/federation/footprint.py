"""What a federation's models cost, stated in the run header: each architecture's forward FLOPs per
sample, and what the clients' states hold in memory, checked before round 1 (``engine.client_store``).

With the ``memory`` store every client's state (its local model's weights and buffers, and whatever
else its algorithm keeps: an adapter, a shared model copy) stays resident for the whole run, on the
run's device. A federation of big models (20 ResNet-152 clients hold about 4.7 GB of fp32 weights
before any optimizer state) can exceed the machine's memory; such a run is refused before training,
with the figure, instead of being killed mid-run. The ``disk`` store keeps one file per client and a
few states in memory at a time.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from pfedlora.errors import UserError

# the rest of a run (data, the workers' models, activations, optimizer state) needs room too
RESIDENT_SHARE = 0.8


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: MemAvailable of /proc/meminfo on the CPU, free GPU memory on CUDA;
    None when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def state_bytes(state: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))


def client_state_bytes(archs: list[str], init_client: Callable[[int], dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """arch -> (clients of that arch, bytes of one client's initial state), measured on the first client
    of each architecture (``archs[k]`` is client k's)."""
    first = {}
    for client_id, arch in enumerate(archs):
        first.setdefault(arch, client_id)
    counts = Counter(archs)
    return {arch: (counts[arch], state_bytes(init_client(client_id))) for arch, client_id in first.items()}


def forward_flops_per_sample(models: dict[str, torch.nn.Module], sample: torch.Tensor) -> dict[str, int]:
    """arch -> FLOPs of one forward pass on ``sample`` (one input, batch dimension 1), eval mode."""
    from pfedlora.metrics.flops import forward_flops

    return {arch: forward_flops(model, sample) for arch, model in models.items()}


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_client_memory(store: str, device: torch.device, archs: list[str],
                        init_client: Callable[[int], dict[str, Any]],
                        available: Callable[[torch.device], int | None] | None = None) -> list[str]:
    """Header lines stating the clients' resident states; UserError (with the figure and the way out)
    when the memory store's total exceeds ``RESIDENT_SHARE`` of the device's free memory."""
    # a client's initial state is a function of its seed; measuring it must not move the run's random streams
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        sizes = client_state_bytes(archs, init_client)
    total = sum(count * size for count, size in sizes.values())
    per_arch = ", ".join(f"{arch}: {count} x {size / 1e6:,.1f} MB" for arch, (count, size) in sizes.items())
    if store != "memory":
        return [f"client states: {_gb(total)} in all ({per_arch}), on disk (engine.client_store: disk)"]
    free = (available or available_bytes)(device)
    if free is not None and total > RESIDENT_SHARE * free:
        raise UserError(f"config: the {len(archs)} clients' states need {_gb(total)} of {device.type} memory "
                        f"({per_arch}) but {_gb(free)} is free (at most {RESIDENT_SHARE:.0%} of it for client "
                        "states); set engine.client_store: disk (one file per client, a few in memory at a time)")
    shown = "unknown" if free is None else _gb(free)
    return [f"client states: {_gb(total)} in {device.type} memory ({per_arch}); {shown} free"]
