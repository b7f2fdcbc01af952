"""Fault injection for the simulator (config section ``faults``).

The simulator wraps the algorithm's ``client_update`` with these faults; the algorithm never
knows. Every draw comes from ``derive_seed(seed, "faults", round, client)``, so a run with faults
is as reproducible as one without, and independent of client order.

* ``drop_prob``: the client never answers (no training, no upload).
* ``crash_prob``: the client crashes mid-training: the compute is spent, but its new state and its
  upload are lost (the client restarts from its previous state next time).
* ``straggler_prob`` with ``deadline``: the client takes U(1, ``straggler_slowdown``) times a normal
  client's time; past the deadline its upload misses the round (it keeps its locally trained state).
* ``nan_clients``, ``wrong_shape_clients``, ``oversized_clients``, ``scale_clients``: malicious or
  broken clients whose upload is corrupted after honest training; scaling multiplies the update
  (upload - broadcast) by ``scale_factor``, a simple model-poisoning attack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pfedlora.algorithms.base import Payload, derive_seed
from pfedlora.config import FaultsConfig


@dataclass(frozen=True)
class ClientFate:
    dropped: bool = False
    crashed: bool = False
    late: bool = False


def client_fate(faults: FaultsConfig, seed: int, round_index: int, client_id: int) -> ClientFate:
    """What happens to ``client_id`` in ``round_index``; the draws are made in a fixed order."""
    rng = np.random.default_rng(derive_seed(seed, "faults", round_index, client_id))
    drop, crash, straggle, slowdown = rng.random(4)
    duration = 1.0
    if straggle < faults.straggler_prob:
        duration = 1.0 + slowdown * (faults.straggler_slowdown - 1.0)
    return ClientFate(
        dropped=bool(drop < faults.drop_prob),
        crashed=bool(crash < faults.crash_prob),
        late=faults.deadline is not None and duration > faults.deadline,
    )


def corrupt_upload(faults: FaultsConfig, client_id: int, upload: Payload, broadcast: Payload) -> Payload:
    """The upload a broken or malicious ``client_id`` sends instead of ``upload``."""
    malicious = (faults.scale_clients, faults.nan_clients, faults.wrong_shape_clients, faults.oversized_clients)
    if not upload or not any(client_id in ids for ids in malicious):
        return upload
    corrupted = dict(upload)
    first = next(iter(upload))
    tensor = upload[first]
    if client_id in faults.scale_clients:
        for name, value in upload.items():
            if not value.is_floating_point():
                continue
            base = broadcast.get(name)
            if isinstance(base, torch.Tensor) and base.shape == value.shape:
                corrupted[name] = base + faults.scale_factor * (value - base)
            else:
                corrupted[name] = faults.scale_factor * value
    if client_id in faults.nan_clients and tensor.is_floating_point() and tensor.numel() > 0:
        poisoned = corrupted[first].clone()
        poisoned.view(-1)[0] = float("nan")
        corrupted[first] = poisoned
    if client_id in faults.wrong_shape_clients:
        # same bytes in the wrong layout (or one element short for a vector)
        corrupted[first] = tensor.reshape(-1) if tensor.dim() > 1 else tensor[:-1]
    if client_id in faults.oversized_clients:
        corrupted[first] = torch.cat([tensor.reshape(-1), tensor.reshape(-1)])
    return corrupted
