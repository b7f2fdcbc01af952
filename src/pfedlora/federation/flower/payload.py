"""Payload <-> Flower ArrayRecord conversion and the byte accounting of what crosses the network.

Bytes are counted as the simulator counts them: the sum over payload tensors of numel x itemsize
(the raw tensor data in the dtype it is sent in; framing overhead is not counted).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from pfedlora.algorithms.base import Payload
from pfedlora.errors import UserError


def to_array_record(payload: Payload) -> ArrayRecord:
    """A payload as an ArrayRecord, tensor names and dtypes kept (numpy copies on the CPU)."""
    return ArrayRecord({name: Array(tensor.detach().cpu().contiguous().numpy()) for name, tensor in payload.items()})


def from_array_record(record: ArrayRecord, device: torch.device | str = "cpu") -> Payload:
    """The payload carried by ``record``; raises UserError if an entry is not a numeric array."""
    payload: Payload = {}
    for name, array in record.items():
        try:
            ndarray = array.numpy()
        except Exception as exc:  # a malformed array from a peer
            raise UserError(f"payload entry {name!r} is not a valid array: {exc}") from None
        payload[name] = torch.from_numpy(np.array(ndarray, copy=True)).to(device)
    return payload


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of tensor data in ``record``: sum of numel x itemsize over its arrays."""
    total = 0
    for array in record.values():
        ndarray = array.numpy()
        total += int(ndarray.size) * int(ndarray.itemsize)
    return total


def payload_bytes(payload: Payload) -> int:
    """Bytes of tensor data in ``payload`` (same figure as :func:`record_bytes` of its record)."""
    return sum(int(t.numel()) * int(t.element_size()) for t in payload.values())
