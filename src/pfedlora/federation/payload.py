"""Payloads on the wire: serialization, the wire dtype, and the bytes that are counted.

A payload (``dict[str, Tensor]``) is sent as one array per tensor, the way the Flower runtime
puts it in an ``ArrayRecord``: each array's raw data in the wire dtype plus a small description
(name, dtype, shape). The communication cost counted everywhere in pfedlora is the raw data:
``numel * itemsize`` in the wire dtype, summed over the payload (:func:`payload_nbytes`). The
description is framing (a few dozen bytes per tensor) and is not counted.

:func:`serialize_payload` writes exactly that: a 4-byte little-endian header length, a JSON
header describing the arrays, then their raw buffers back to back, so
``len(blob) == header_size + payload_nbytes(payload, dtype)``.

The wire dtype (``payload_dtype``: float32, float16, bfloat16) applies to floating tensors;
integer and boolean tensors (counts, labels) keep theirs. The simulator really sends every
payload through :func:`transmit` (serialize, deserialize, restore the receiver's dtype), so a
narrower wire dtype costs the accuracy it costs in a deployment.
"""

from __future__ import annotations

import json
import struct

import torch

from pfedlora.errors import UserError

Payload = dict[str, torch.Tensor]

WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_DTYPE_NAMES = {
    torch.float64: "float64", torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8",
    torch.uint8: "uint8", torch.bool: "bool",
}
_DTYPES_BY_NAME = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_MAGIC = b"PFLP"


def wire_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in WIRE_DTYPES:
        raise UserError(f"payload_dtype: unknown dtype {name!r}; valid: {', '.join(WIRE_DTYPES)}")
    return WIRE_DTYPES[name]


def on_wire(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` as sent: floating tensors in the wire dtype, others unchanged."""
    return tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()


def payload_nbytes(payload: Payload, dtype: str | torch.dtype = "float32") -> int:
    """Bytes of raw tensor data ``payload`` occupies on the wire (``numel * itemsize``, summed)."""
    dtype = wire_dtype(dtype)
    total = 0
    for tensor in payload.values():
        itemsize = dtype.itemsize if tensor.is_floating_point() else tensor.dtype.itemsize
        total += tensor.numel() * itemsize
    return total


def serialize_payload(payload: Payload, dtype: str | torch.dtype = "float32") -> bytes:
    """The payload as bytes: header length, JSON header, raw buffers in the wire dtype."""
    dtype = wire_dtype(dtype)
    entries, buffers, offset = [], [], 0
    for name, tensor in payload.items():
        sent = on_wire(tensor, dtype).cpu().contiguous()
        if sent.dtype not in _DTYPE_NAMES:
            raise ValueError(f"payload tensor {name!r} has unsupported dtype {sent.dtype}")
        raw = sent.reshape(-1).view(torch.uint8).numpy().tobytes()
        entries.append({"name": name, "dtype": _DTYPE_NAMES[sent.dtype], "shape": list(sent.shape),
                        "offset": offset, "nbytes": len(raw)})
        buffers.append(raw)
        offset += len(raw)
    header = json.dumps(entries, separators=(",", ":")).encode()
    return _MAGIC + struct.pack("<I", len(header)) + header + b"".join(buffers)


def header_size(blob: bytes) -> int:
    """Bytes of framing in a serialized payload (magic, length, JSON header)."""
    return len(_MAGIC) + 4 + struct.unpack_from("<I", blob, len(_MAGIC))[0]


def deserialize_payload(blob: bytes) -> Payload:
    """The payload ``serialize_payload`` wrote, tensors in their wire dtype on the CPU."""
    try:
        if blob[: len(_MAGIC)] != _MAGIC:
            raise ValueError("bad magic")
        start = header_size(blob)
        entries = json.loads(blob[len(_MAGIC) + 4 : start])
        payload: Payload = {}
        data = memoryview(blob)[start:]
        for entry in entries:
            dtype = _DTYPES_BY_NAME[entry["dtype"]]
            chunk = bytearray(data[entry["offset"] : entry["offset"] + entry["nbytes"]])
            if len(chunk) != entry["nbytes"]:
                raise ValueError("truncated")
            flat = torch.frombuffer(chunk, dtype=torch.uint8) if chunk else torch.empty(0, dtype=torch.uint8)
            payload[entry["name"]] = flat.view(dtype).reshape(entry["shape"])
    except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError) as exc:
        raise UserError(f"payload is not a serialized pfedlora payload ({exc})") from None
    return payload


def transmit(payload: Payload, dtype: str | torch.dtype = "float32") -> tuple[Payload, int]:
    """Send ``payload`` through the wire: ``(what the receiver gets, bytes counted)``.

    The receiver gets every tensor back in its original dtype and device, with the values the
    wire dtype kept.
    """
    blob = serialize_payload(payload, dtype)
    received = deserialize_payload(blob)
    restored = {name: received[name].to(device=tensor.device, dtype=tensor.dtype) for name, tensor in payload.items()}
    return restored, len(blob) - header_size(blob)
