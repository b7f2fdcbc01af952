"""Wire format: exact round trips, wire dtypes, and bytes = numel x itemsize."""

import pytest
import torch

from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.federation.payload import (
    deserialize_payload,
    header_size,
    payload_nbytes,
    serialize_payload,
    transmit,
)
from pfedlora.federation.simulation import Federation


def _payload():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(4), "counts": torch.tensor([1, 2, 3]),
            "scalar": torch.tensor(0.1)}


@pytest.mark.parametrize("dtype,size", [("float32", 4), ("float16", 2), ("bfloat16", 2)])
def test_serialized_data_is_numel_times_itemsize_and_integers_keep_their_dtype(dtype, size):
    payload = _payload()
    blob = serialize_payload(payload, dtype)
    expected = (12 + 4 + 1) * size + 3 * 8
    assert payload_nbytes(payload, dtype) == expected
    assert len(blob) - header_size(blob) == expected
    back = deserialize_payload(blob)
    assert list(back) == list(payload)
    assert back["counts"].dtype == torch.int64 and torch.equal(back["counts"], payload["counts"])
    assert back["a.weight"].dtype == getattr(torch, dtype)
    assert torch.equal(back["a.weight"], payload["a.weight"].to(getattr(torch, dtype)))
    assert back["scalar"].shape == ()


def test_transmit_is_exact_in_float32_and_quantizes_in_float16():
    payload = _payload()
    received, nbytes = transmit(payload, "float32")
    assert all(torch.equal(received[k], payload[k]) for k in payload) and nbytes == payload_nbytes(payload)
    received, nbytes = transmit(payload, "float16")
    assert received["a.weight"].dtype == torch.float32  # the receiver's dtype is restored
    assert not torch.equal(received["a.weight"], payload["a.weight"])
    assert torch.allclose(received["a.weight"], payload["a.weight"], atol=1e-2)
    assert transmit({}, "float16") == ({}, 0)


def test_garbage_is_a_user_error():
    with pytest.raises(UserError, match="not a serialized pfedlora payload"):
        deserialize_payload(b"hello world")


def test_pfedlora_adapter_upload_bytes_are_parameter_count_times_dtype_size():
    federation = Federation.build(build_config({"num_clients": 2, "model_pool": ["cnn5"], "partition": {"kind": "iid"}}))
    _, broadcast = federation.algorithm.init_server(federation.context)
    adapter_parameters = federation.algorithm.describe(federation.context)["adapter_parameters"]
    assert payload_nbytes(broadcast, "float32") == adapter_parameters * 4
    assert payload_nbytes(broadcast, "bfloat16") == adapter_parameters * 2
