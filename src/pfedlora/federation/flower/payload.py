"""Payload <-> Flower ArrayRecord conversion and the byte accounting of what crosses the network.

Bytes are counted as the simulator counts them: the sum over payload tensors of numel x itemsize
(the raw tensor data in the dtype it is sent in; framing overhead is not counted).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from pfedlora.algorithms.base import Payload
from pfedlora.data.cache import one_line
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


def _ndarray(name: str, array: Array) -> np.ndarray:
    """The numpy array an ``Array`` from a peer holds, read without trusting its header.

    Flower's ``Array.numpy()`` is ``np.load``, which allocates what the .npy header declares before
    reading: a few bytes declaring 10^13 float64 raise MemoryError (or, for less, take that memory).
    Here the header must declare exactly the bytes that follow it, and no object dtype, before
    anything is allocated; the cost is then bounded by what was actually received."""
    if not isinstance(array, Array) or array.stype != "numpy.ndarray" or not isinstance(array.data, bytes):
        raise UserError(f"payload entry {name!r} is not a numpy array (stype {getattr(array, 'stype', None)!r}); "
                        "accepted: Flower Arrays of numeric numpy data")
    handle = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(handle)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(handle)
    except Exception as exc:  # a malformed header from a peer
        raise UserError(f"payload entry {name!r} is not a valid array: {one_line(exc)}") from None
    if dtype.hasobject:
        raise UserError(f"payload entry {name!r} has an object dtype; accepted: numeric arrays")
    count = math.prod(shape)
    declared, held = count * dtype.itemsize, len(array.data) - handle.tell()
    if declared != held:
        raise UserError(f"payload entry {name!r} declares shape {list(shape)} of {dtype} ({declared:,} bytes) but "
                        f"carries {held:,} bytes of data; accepted: arrays whose header matches their data")
    ndarray = np.frombuffer(array.data, dtype=dtype, count=count, offset=handle.tell())
    return ndarray.reshape(shape[::-1]).transpose() if fortran else ndarray.reshape(shape)


def from_array_record(record: ArrayRecord, device: torch.device | str = "cpu", *, as_float32: bool = False) -> Payload:
    """The payload carried by ``record``; raises UserError (one line) if an entry is not a numeric
    array or its header does not match its data (see :func:`_ndarray`).

    ``as_float32`` restores floating tensors sent in a narrower wire dtype to float32.
    """
    if not isinstance(record, ArrayRecord):
        raise UserError(f"payload is a {type(record).__name__}, not an ArrayRecord")
    payload: Payload = {}
    for name, array in record.items():
        ndarray = _ndarray(name, array)
        if ndarray.dtype.kind not in "biuf":
            raise UserError(f"payload entry {name!r} has dtype {ndarray.dtype}; accepted: bool, integer or float")
        tensor = torch.from_numpy(np.array(ndarray, copy=True))
        if name.endswith(BF16_SUFFIX):
            if tensor.dtype != torch.int16:
                raise UserError(f"payload entry {name!r} is {ndarray.dtype}; accepted: int16 bit patterns")
            name, tensor = name[: -len(BF16_SUFFIX)], tensor.view(torch.bfloat16)
        if as_float32 and tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        payload[name] = tensor.to(device)
    return payload


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of tensor data in ``record``: sum of numel x itemsize over its arrays (read as
    :func:`from_array_record` reads them: a header that does not match its data raises UserError)."""
    return sum(int(ndarray.size) * int(ndarray.itemsize)
               for ndarray in (_ndarray(name, array) for name, array in record.items()))


def payload_bytes(payload: Payload) -> int:
    """Bytes of tensor data in ``payload`` (same figure as :func:`record_bytes` of its record)."""
    return sum(int(t.numel()) * int(t.element_size()) for t in payload.values())
