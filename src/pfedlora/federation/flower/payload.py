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
from pfedlora.federation.payload import on_wire, wire_dtype


# numpy has no bfloat16: such tensors travel as their int16 bit patterns under a marked name
BF16_SUFFIX = "@bfloat16"


def to_array_record(payload: Payload, dtype: str | None = None) -> ArrayRecord:
    """A payload as an ArrayRecord (numpy copies on the CPU).

    ``dtype`` (``payload_dtype``: float32, float16, bfloat16) casts floating tensors for the wire,
    as the simulator's :func:`~pfedlora.federation.payload.transmit` does; None keeps dtypes
    (client state kept between rounds).
    """
    arrays = {}
    for name, tensor in payload.items():
        tensor = tensor.detach().cpu()
        if dtype is not None:
            tensor = on_wire(tensor, wire_dtype(dtype))
        if tensor.dtype == torch.bfloat16:
            arrays[name + BF16_SUFFIX] = Array(tensor.view(torch.int16).contiguous().numpy())
        else:
            arrays[name] = Array(tensor.contiguous().numpy())
    return ArrayRecord(arrays)


def from_array_record(record: ArrayRecord, device: torch.device | str = "cpu", *, as_float32: bool = False) -> Payload:
    """The payload carried by ``record``; raises UserError if an entry is not a numeric array.

    ``as_float32`` restores floating tensors sent in a narrower wire dtype to float32.
    """
    payload: Payload = {}
    for name, array in record.items():
        try:
            ndarray = array.numpy()
        except Exception as exc:  # a malformed array from a peer
            raise UserError(f"payload entry {name!r} is not a valid array: {exc}") from None
        tensor = torch.from_numpy(np.array(ndarray, copy=True))
        if name.endswith(BF16_SUFFIX):
            name, tensor = name[: -len(BF16_SUFFIX)], tensor.view(torch.bfloat16)
        if as_float32 and tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        payload[name] = tensor.to(device)
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
