"""Checkpoints of the whole federation state, written atomically.

A checkpoint holds the round it was taken after, the server state and broadcast, every client's
state (local model, adapter, and whatever else the algorithm keeps per client; optimizers are
created fresh per call of the training loop, so no optimizer state persists), the metrics rows so
far, the elapsed wall time, and the global RNG states (torch, numpy, random). The simulator derives
all of a round's randomness from ``(seed, round, client)``, so restoring these is enough for a
resumed run to produce the same numbers as an uninterrupted one.

The file is written to a temp file in the same directory, fsynced, and renamed over the previous
checkpoint, so a crash at any moment leaves either the old or the new checkpoint, never a torn one.
A checkpoint records a hash of the config; loading one from another config, or a truncated or
corrupted file, raises :class:`~pfedlora.errors.UserError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfedlora.config import Config
from pfedlora.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
# keys that may differ between the run and its resumption without changing any result
_IGNORED_KEYS = ("device", "checkpoint_every")


def config_hash(config: Config) -> str:
    document = config.to_dict()
    for key in _IGNORED_KEYS:
        document.pop(key, None)
    document.get("dataset", {}).pop("cache_dir", None)
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def capture_rng() -> dict[str, Any]:
    # plain tensors and tuples only, so the checkpoint loads with weights_only=True
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "random": random.getstate()}


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["random"])


def save_checkpoint(run_dir: str | Path, config: Config, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (round, server/client states, history, ...) to RUN_DIR/checkpoint.pt."""
    path = Path(run_dir) / CHECKPOINT_NAME
    document = {"format": FORMAT_VERSION, "config_hash": config_hash(config), "rng": capture_rng(), **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(run_dir: str | Path, config: Config) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir`` (None when there is none); UserError when unusable."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        # weights_only: a checkpoint is data, never code to execute
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupted, or not a checkpoint at all
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {str(path)!r} is corrupted or truncated ({reason}); "
                        "delete it to restart the run, or restore a good copy") from None
    required = {"format", "config_hash", "round", "server_state", "broadcast", "client_states", "history",
                "client_accuracies", "pending", "costs", "elapsed", "rng"}
    if not isinstance(document, dict) or not required <= set(document):
        raise UserError(f"checkpoint {str(path)!r} is not a pfedlora checkpoint (missing fields)")
    if document["format"] != FORMAT_VERSION:
        raise UserError(f"checkpoint {str(path)!r} has format {document['format']!r}; this version reads {FORMAT_VERSION}")
    if document["config_hash"] != config_hash(config):
        raise UserError(f"checkpoint {str(path)!r} was written by a different config than "
                        f"{str(Path(run_dir) / 'config.yaml')!r}; resume with the run's own config")
    return document


def checkpoint_round(run_dir: str | Path) -> int | None:
    """The round of the checkpoint in ``run_dir`` without checking its config (None if absent/unreadable)."""
    try:
        document = torch.load(Path(run_dir) / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        return int(document["round"])
    except Exception:
        return None
