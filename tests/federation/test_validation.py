"""The server's update validator: every rejection reason, the norm rules, and random payloads."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfedlora.algorithms.base import TensorSpec, Upload, spec_like
from pfedlora.federation.validation import REASONS, Rejection, UpdateValidator, all_finite

BROADCAST = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
SPEC = spec_like(BROADCAST)


def _honest(client_id: int, scale: float = 0.1) -> Upload:
    generator = torch.Generator().manual_seed(client_id)
    return Upload(client_id, {"w": scale * torch.randn(4, 3, generator=generator), "b": torch.full((3,), scale)}, 10.0)


def _reason(upload: Upload, validator: UpdateValidator | None = None, spec=SPEC) -> str | None:
    report = (validator or UpdateValidator()).validate([upload], spec, BROADCAST)
    return report.rejected[0].reason if report.rejected else None


@pytest.mark.parametrize("payload, weight, reason", [
    ([1, 2], 1.0, "bad_payload"),
    ({"w": [[0.0] * 3] * 4, "b": torch.zeros(3)}, 1.0, "bad_payload"),
    ({"w": torch.zeros(4, 3), "b": torch.zeros(3)}, float("nan"), "bad_weight"),
    ({"w": torch.zeros(4, 3), "b": torch.zeros(3)}, -1.0, "bad_weight"),
    ({"w": torch.zeros(4, 3)}, 1.0, "missing_keys"),
    ({"w": torch.zeros(4, 3), "b": torch.zeros(3), "extra": torch.zeros(1)}, 1.0, "unexpected_keys"),
    ({"w": torch.zeros(4, 3, dtype=torch.float64), "b": torch.zeros(3)}, 1.0, "dtype"),
    ({"w": torch.zeros(4, 3), "b": torch.zeros(3, dtype=torch.int64)}, 1.0, "dtype"),
    ({"w": torch.zeros(12), "b": torch.zeros(3)}, 1.0, "shape"),
    ({"w": torch.zeros(3, 4), "b": torch.zeros(3)}, 1.0, "shape"),
    ({"w": torch.zeros(4, 3), "b": torch.zeros(2)}, 1.0, "shape"),
    ({"w": torch.zeros(8, 3), "b": torch.zeros(3)}, 1.0, "oversized"),
    ({"w": torch.zeros(4, 3), "b": torch.tensor([0.0, math.nan, 0.0])}, 1.0, "non_finite"),
    ({"w": torch.full((4, 3), math.inf), "b": torch.zeros(3)}, 1.0, "non_finite"),
])
def test_each_structural_rejection_reason(payload, weight, reason):
    assert reason in REASONS
    assert _reason(Upload(7, payload, weight)) == reason


def test_norm_above_absolute_bound():
    assert _reason(_honest(0, scale=10.0), UpdateValidator(max_norm=1.0)) == "norm_above_max"
    assert _reason(_honest(0, scale=0.01), UpdateValidator(max_norm=1.0)) is None


def test_norm_above_round_median_rejects_only_the_scaled_update():
    uploads = [_honest(k) for k in range(4)] + [_honest(4, scale=5.0)]
    report = UpdateValidator(norm_factor=10.0).validate(uploads, SPEC, BROADCAST)
    assert [u.client_id for u in report.accepted] == [0, 1, 2, 3]
    assert [(r.client_id, r.reason) for r in report.rejected] == [(4, "norm_above_median")]
    assert "client 4: norm_above_median" in str(report.rejected[0])
    # the norm is of the update (upload - broadcast), not of the upload
    shifted = {name: t + 100.0 for name, t in BROADCAST.items()}
    moved = [Upload(u.client_id, {n: t + 100.0 for n, t in u.payload.items()}, 1.0) for u in uploads]
    assert len(UpdateValidator(norm_factor=10.0).validate(moved, SPEC, shifted).accepted) == 4


def test_median_rule_needs_enough_uploads():
    # with two uploads there is no meaningful median: an honest client is never judged against one attacker
    uploads = [_honest(0), _honest(1, scale=5.0)]
    assert len(UpdateValidator(norm_factor=10.0, min_for_median=3).validate(uploads, SPEC, BROADCAST).accepted) == 2
    assert len(UpdateValidator(norm_factor=None).validate([_honest(k) for k in range(3)] + [_honest(3, 1e6)], SPEC,
                                                          BROADCAST).accepted) == 4


def test_variable_shapes_from_an_algorithm_spec():
    spec = {"protos": TensorSpec((10, None), torch.float32, max_numel=10 * 8), "counts": TensorSpec((10,), torch.float32),
            "factors": TensorSpec(None, torch.float32, max_numel=100)}
    ok = {"protos": torch.zeros(10, 5), "counts": torch.ones(10), "factors": torch.zeros(3, 7)}
    assert _reason(Upload(0, ok, 1.0), spec=spec) is None
    assert _reason(Upload(0, ok | {"protos": torch.zeros(9, 5)}, 1.0), spec=spec) == "shape"
    assert _reason(Upload(0, ok | {"protos": torch.zeros(10, 5, 1)}, 1.0), spec=spec) == "shape"
    assert _reason(Upload(0, ok | {"protos": torch.zeros(10, 9)}, 1.0), spec=spec) == "oversized"
    assert _reason(Upload(0, ok | {"factors": torch.zeros(101)}, 1.0), spec=spec) == "oversized"
    # empty payloads (standalone training) are valid against an empty spec
    assert _reason(Upload(0, {}, 1.0), spec={}) is None


def test_all_finite():
    assert all_finite({"a": torch.zeros(2), "n": torch.tensor([1, 2])})
    assert not all_finite({"a": torch.tensor([0.0, math.inf])})


# --- property-based: whatever a client sends, the validator answers with accept or a clean rejection

_tensors = st.one_of(
    st.builds(lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
              st.lists(st.integers(0, 5), max_size=3).map(tuple),
              st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool, torch.uint8]),
              st.floats(allow_nan=True, allow_infinity=True, width=32)),
    st.just(torch.zeros(4, 3)),
)
_values = st.one_of(_tensors, st.none(), st.integers(), st.floats(), st.text(max_size=5),
                    st.lists(st.floats(), max_size=3))
_keys = st.one_of(st.sampled_from(["w", "b", "x"]), st.text(max_size=8), st.integers())
_payloads = st.one_of(st.dictionaries(_keys, _values, max_size=4), st.none(), st.integers(), st.text(),
                      st.lists(_values, max_size=3), st.builds(lambda b: dict(BROADCAST, b=b), _tensors))
_weights = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10), st.none(), st.text(max_size=3),
                     st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_payloads, _weights), min_size=0, max_size=5), st.sampled_from([None, 10.0, 1.5]),
       st.sampled_from([None, 1.0, 1e30]))
def test_random_payloads_are_accepted_or_cleanly_rejected(items, norm_factor, max_norm):
    uploads = [Upload(k, payload, weight) for k, (payload, weight) in enumerate(items)]
    report = UpdateValidator(norm_factor=norm_factor, max_norm=max_norm).validate(uploads, SPEC, BROADCAST)
    assert len(report.accepted) + len(report.rejected) == len(uploads)
    for rejection in report.rejected:
        assert isinstance(rejection, Rejection) and rejection.reason in REASONS and "\n" not in str(rejection)
    for upload in report.accepted:
        assert set(upload.payload) == set(SPEC) and all_finite(upload.payload)
        assert all(upload.payload[n].shape == s.shape and upload.payload[n].dtype == s.dtype for n, s in SPEC.items())


def test_every_algorithm_upload_passes_its_own_spec_and_a_missing_tensor_is_rejected():
    from pfedlora.algorithms import algorithm_names, get_algorithm
    from pfedlora.algorithms.base import ClientData, FederationContext, Upload
    from pfedlora.config import build_config
    from pfedlora.federation.validation import UpdateValidator

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 32, 32, generator=g), torch.arange(24) % 10
    data = ClientData(x, y, x[:4], y[:4])
    for name in algorithm_names():
        pool = ["cnn5"] if name == "fedavg" else ["cnn4", "cnn5"]
        config = build_config({"algorithm": name, "num_clients": 2, "model_pool": pool, "train": {"batch_size": 8}})
        ctx = FederationContext(config, (1, 32, 32), 10, torch.device("cpu"))
        algorithm = get_algorithm(name)
        _, broadcast = algorithm.init_server(ctx)
        result = algorithm.client_update(ctx, 0, algorithm.init_client(ctx, 0), broadcast, data, g)
        spec = algorithm.expected_upload(ctx, broadcast)
        report = UpdateValidator(norm_factor=None).validate([Upload(0, result.upload, result.weight)], spec, broadcast)
        assert not report.rejected, (name, report.rejected)
        required = [key for key, tensor_spec in spec.items() if not tensor_spec.optional]
        if required:
            broken = {k: v for k, v in result.upload.items() if k != required[0]}
            report = UpdateValidator(norm_factor=None).validate([Upload(0, broken, 1.0)], spec, broadcast)
            assert [r.reason for r in report.rejected] == ["missing_keys"], name
