"""Server-side validation of client uploads, before anything is aggregated.

Runtime-independent (the simulator and the Flower server both use it): a plain class over
:class:`~pfedlora.algorithms.base.Upload` objects and an
:data:`~pfedlora.algorithms.base.UploadSpec`. An upload is rejected, with the client id and one
reason, when

* it is not a mapping of names to tensors, or its weight is not a finite number >= 0
  (``bad_payload``, ``bad_weight``);
* keys are missing or unexpected (``missing_keys``, ``unexpected_keys``);
* a tensor has the wrong dtype (``dtype``), more elements than expected (``oversized``) or another
  shape (``shape``);
* a value is NaN or infinite (``non_finite``);
* the algorithm's own rule over several tensors says it is malformed (``malformed``; e.g. FedKD:
  every weight either dense or as SVD factors U, S, V of one rank);
* the update's L2 norm exceeds ``max_norm`` (``norm_above_max``) or ``norm_factor`` times the
  median norm of the round's structurally valid uploads (``norm_above_median``, only with at least
  ``min_for_median`` of them, so one honest client is never judged against a single attacker).

The update is ``upload - broadcast`` for tensors whose name and shape match the broadcast (model
deltas), else the upload itself (e.g. prototypes), so the norm rule bounds scaled-up updates for
every algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from pfedlora.algorithms.base import Payload, TensorSpec, Upload, UploadSpec

REASONS = (
    "bad_payload",
    "bad_weight",
    "missing_keys",
    "unexpected_keys",
    "dtype",
    "oversized",
    "shape",
    "non_finite",
    "malformed",
    "norm_above_max",
    "norm_above_median",
)


@dataclass(frozen=True)
class Rejection:
    client_id: object
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"rejected update of client {self.client_id}: {self.reason} ({self.detail})"


@dataclass
class ValidationReport:
    accepted: list[Upload]
    rejected: list[Rejection]
    norms: dict[object, float]


class UpdateValidator:
    """Checks uploads against a spec and a norm bound; see the module docstring for the rules."""

    def __init__(self, norm_factor: float | None = 100.0, max_norm: float | None = None,
                 min_for_median: int = 3) -> None:
        self.norm_factor = norm_factor
        self.max_norm = max_norm
        self.min_for_median = max(1, int(min_for_median))

    def check_one(self, upload: Upload, spec: UploadSpec, broadcast: Payload,
                  check: Callable[[Payload], str | None] | None = None) -> Rejection | float:
        """A rejection, or the update's L2 norm when the upload is structurally valid.

        ``check``: the algorithm's extra rule (:meth:`Algorithm.upload_check`), run once the spec holds.
        """
        client_id = getattr(upload, "client_id", "?")
        payload = getattr(upload, "payload", None)
        if not isinstance(payload, Mapping) or not all(isinstance(k, str) for k in payload):
            return Rejection(client_id, "bad_payload", f"payload must map names to tensors, got {type(payload).__name__}")
        weight = getattr(upload, "weight", None)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            return Rejection(client_id, "bad_weight", f"weight must be a finite number >= 0, got {weight!r}")
        missing = sorted(name for name, tensor_spec in spec.items() if not tensor_spec.optional and name not in payload)
        if missing:
            return Rejection(client_id, "missing_keys", f"missing {_names(missing)}")
        unexpected = sorted(set(payload) - set(spec))
        if unexpected:
            return Rejection(client_id, "unexpected_keys", f"unexpected {_names(unexpected)}")
        squared = 0.0
        for name, expected in spec.items():
            if name not in payload:  # an optional tensor that was not sent
                continue
            tensor = payload[name]
            problem = _check_tensor(name, tensor, expected)
            if problem is not None:
                return Rejection(client_id, *problem)
            if not tensor.is_floating_point():
                continue
            values = tensor.detach()
            if not bool(torch.isfinite(values).all()):
                return Rejection(client_id, "non_finite", f"{name} contains NaN or Inf")
            reference = broadcast.get(name) if isinstance(broadcast, Mapping) else None
            values = values.to(torch.float64)
            if isinstance(reference, torch.Tensor) and reference.shape == values.shape:
                values = values - reference.detach().to(device=values.device, dtype=torch.float64)
            squared += float((values * values).sum())
        if check is not None:
            problem = check(payload)
            if problem is not None:
                return Rejection(client_id, "malformed", problem)
        norm = math.sqrt(squared)
        if not math.isfinite(norm):
            return Rejection(client_id, "non_finite", "update norm overflows")
        if self.max_norm is not None and norm > self.max_norm:
            return Rejection(client_id, "norm_above_max", f"norm {norm:.4g} > max_norm {self.max_norm:.4g}")
        return norm

    def validate(self, uploads: list[Upload], spec: UploadSpec, broadcast: Payload,
                 check: Callable[[Payload], str | None] | None = None) -> ValidationReport:
        """Split ``uploads`` into accepted ones and rejections (in upload order)."""
        checked = [(upload, self.check_one(upload, spec, broadcast, check)) for upload in uploads]
        norms = {u.client_id: r for u, r in checked if isinstance(r, float)}
        bound = None
        if self.norm_factor is not None and len(norms) >= self.min_for_median:
            bound = norm_bound(list(norms.values()), self.norm_factor)
        accepted: list[Upload] = []
        rejected: list[Rejection] = []
        for upload, result in checked:
            if isinstance(result, Rejection):
                rejected.append(result)
            elif bound is not None and result > bound:
                rejected.append(Rejection(upload.client_id, "norm_above_median",
                                          f"norm {result:.4g} > {self.norm_factor:g} x round median {bound / self.norm_factor:.4g}"))
            else:
                accepted.append(upload)
        return ValidationReport(accepted, rejected, norms)


def all_finite(payload: Payload) -> bool:
    """True when every floating-point tensor of ``payload`` is free of NaN and Inf."""
    return all(bool(torch.isfinite(t).all()) for t in payload.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def _check_tensor(name: str, tensor: object, expected: TensorSpec) -> tuple[str, str] | None:
    if not isinstance(tensor, torch.Tensor):
        return "bad_payload", f"{name} is a {type(tensor).__name__}, not a tensor"
    if tensor.is_sparse or tensor.layout != torch.strided:
        return "bad_payload", f"{name} is not a dense tensor"
    if tensor.dtype != expected.dtype:
        return "dtype", f"{name} has dtype {_dtype(tensor.dtype)}, expected {_dtype(expected.dtype)}"
    shape = tuple(tensor.shape)
    if expected.shape is None:
        if expected.max_numel is not None and tensor.numel() > expected.max_numel:
            return "oversized", f"{name} has {tensor.numel()} elements, at most {expected.max_numel} accepted"
        return None
    fixed = all(dim is not None for dim in expected.shape)
    limit = math.prod(expected.shape) if fixed else expected.max_numel
    if limit is not None and tensor.numel() > limit:
        return "oversized", f"{name} has {tensor.numel()} elements, at most {limit} accepted"
    if len(shape) != len(expected.shape) or any(e is not None and e != d for e, d in zip(expected.shape, shape)):
        wanted = "(" + ", ".join("*" if d is None else str(d) for d in expected.shape) + ")"
        return "shape", f"{name} has shape {shape}, expected {wanted}"
    return None


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n[:40]) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def norm_bound(norms: list[float], norm_factor: float) -> float | None:
    """The largest update norm accepted in a round whose structurally valid updates have ``norms``:
    ``norm_factor`` x their median (``None``, no bound, when the median is 0)."""
    median = _median(norms)
    return norm_factor * median if median > 0 else None


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
