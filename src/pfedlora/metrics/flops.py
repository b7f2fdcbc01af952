"""Measured FLOPs: training steps, evaluation forwards and server-side work.

Counts come from :class:`OpCounter`, torch's ``FlopCounterMode`` formulas, which count the matrix
products and convolutions torch actually executes (2 FLOPs per multiply-accumulate, forward and
backward separately; elementwise ops, pooling and the loss are not counted). Counting one step
costs a little, so a count is cached per key and multiplied by the number of steps. The key must
capture everything the count depends on:

* the module's structure (module types, their non-tensor attributes such as stride or placement,
  parameter shapes),
* which parameters are trainable (freezing removes weight-gradient products from the backward),
* the loss function, including the structure of any module or tensor it closes over
  (a distillation teacher, prototypes),
* the batch shape and dtype.

Server FLOPs (:func:`count_server_flops`) also count elementwise arithmetic (add, mul, div,
sums, one FLOP per output element), because aggregation is elementwise: a FedAvg mean would
otherwise cost 0; and SVDs (Golub & Van Loan's 4mn^2 + 22n^3), which the counter skips.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter as _torch_flops
from torch.utils._python_dispatch import TorchDispatchMode

# key -> FLOPs of one forward+backward (training) or one forward (evaluation)
_STEP_CACHE: dict[tuple, int] = {}
_FORWARD_CACHE: dict[tuple, int] = {}

# ---- counts kept on disk between processes
#
# Counting runs the step under a Python dispatch mode (every operator goes through Python), so a
# counted step costs several plain ones, in round 1 of every run and in each worker. The counts
# depend only on the key (structure, shapes, the loss's code) and on the code that counts, so they
# are kept in one small JSON file per torch
# version and pfedlora source tree (any edit of a .py file of pfedlora starts a new file) under
# $PFEDLORA_CACHE (default ~/.cache/pfedlora); PFEDLORA_FLOP_CACHE=0 turns it off. A key missing
# there is counted as before and added (written atomically; concurrent writers may drop each other's
# additions, which are then counted again). The file holds a digest of each key, not the key: the
# keys (module and loss signatures) are large nested tuples, and a file of ~2,000 of them took 0.6 s
# to parse back into tuples in round 1 and ~100 MB in every process that forked from it.
_DISK: dict[str, dict[str, int]] | None = None
_DISK_ENABLED = os.environ.get("PFEDLORA_FLOP_CACHE", "1") != "0"
_DISK_WRITER = True  # False in forked workers: their counts reach the file through the parent (one writer)


def _digest(key: tuple) -> str:
    # repr of nested tuples of str/int/float/bool/None is the same in every process (no hash seed)
    return hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()


def _disk_path() -> Path:
    root = Path(__file__).resolve().parents[1]  # the pfedlora package: counts are valid for this source
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    base = Path(os.environ.get("PFEDLORA_CACHE") or Path.home() / ".cache" / "pfedlora").expanduser()
    return base / f"flops-{digest.hexdigest()[:16]}.json"


def _disk() -> dict[str, dict[str, int]]:
    global _DISK
    if _DISK is None:
        _DISK = {"step": {}, "forward": {}}
        if _DISK_ENABLED:
            try:
                stored = json.loads(_disk_path().read_text())
                for kind in _DISK:
                    _DISK[kind] = {str(digest): int(value) for digest, value in stored.get(kind, {}).items()}
            except (OSError, ValueError, TypeError, AttributeError):
                pass  # no file yet, or unreadable: count
    return _DISK


def _disk_get(kind: str, key: tuple) -> int | None:
    return _disk()[kind].get(_digest(key)) if _DISK_ENABLED else None


def stop_disk_writes() -> None:
    """Called in a forked worker: counts it makes go back to the parent (:func:`counted_since`), which
    writes them, so two workers never overwrite each other's additions to the file."""
    global _DISK_WRITER
    _DISK_WRITER = False


def _disk_add(kind: str, entries: dict[tuple, int]) -> None:
    if not _DISK_ENABLED or not _DISK_WRITER or not entries:
        return
    disk = _disk()
    new = {_digest(key): int(flops) for key, flops in entries.items()}
    if all(disk[kind].get(digest) == flops for digest, flops in new.items()):
        return
    disk[kind].update(new)
    try:
        path = _disk_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(disk))
        os.replace(partial, path)
    except OSError:
        pass  # a read-only home: the count stays in memory


# (static key, per-sample shapes) -> {batch size: FLOPs} of counted steps
_BY_BATCH: dict[tuple, dict[int, int]] = {}


def module_signature(module: nn.Module) -> tuple:
    """The structure of ``module``: what its FLOP count depends on, not its weights."""
    parts: list[tuple] = []
    for name, sub in module.named_modules():
        attrs = tuple(sorted(
            (key, value) for key, value in vars(sub).items()
            if not key.startswith("_") and key != "training" and isinstance(value, (int, float, str, bool, tuple))
        ))
        parts.append((name, type(sub).__qualname__, attrs))
    parts.extend((name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters())
    return tuple(parts)


def _value_signature(value: Any, depth: int = 0) -> Any:
    if isinstance(value, nn.Module):
        grads = tuple(p.requires_grad for p in value.parameters())
        return ("module", module_signature(value), grads)
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), value.requires_grad)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if depth < 3 and isinstance(value, (list, tuple)):
        return tuple(_value_signature(v, depth + 1) for v in value)
    if depth < 3 and isinstance(value, dict):
        return tuple(sorted((str(k), _value_signature(v, depth + 1)) for k, v in value.items()))
    if depth < 3 and callable(value):
        return callable_signature(value, depth + 1)
    return type(value).__qualname__


def callable_signature(fn: Callable, depth: int = 0) -> tuple:
    """A loss function's identity: its code plus the structure of what it closes over."""
    if isinstance(fn, functools.partial):
        return ("partial", callable_signature(fn.func, depth + 1),
                tuple(_value_signature(a, depth + 1) for a in fn.args),
                tuple(sorted((k, _value_signature(v, depth + 1)) for k, v in fn.keywords.items())))
    if isinstance(fn, nn.Module):
        return _value_signature(fn, depth)
    bound_self = getattr(fn, "__self__", None)
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    captured = []
    for cell in cells:
        try:
            captured.append(_value_signature(cell.cell_contents, depth + 1))
        except ValueError:  # an empty cell
            captured.append(None)
    owner = _value_signature(bound_self, depth + 1) if bound_self is not None else None
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    where = (code.co_filename, code.co_firstlineno) if code is not None else None
    return (name, where, owner, tuple(captured))


def step_key(module: nn.Module, trainable: Iterable[nn.Parameter], loss_fn: Callable,
             x: torch.Tensor, y: torch.Tensor) -> tuple:
    trainable_ids = {id(p) for p in trainable}
    own = [p for p in module.parameters()]
    mask = tuple(id(p) in trainable_ids for p in own)
    own_ids = {id(p) for p in own}
    # trainable parameters outside ``module`` (used by loss_fn), by shape
    outside = tuple(sorted(tuple(p.shape) for p in trainable if id(p) not in own_ids)) if trainable_ids - own_ids else ()
    return (module_signature(module), mask, outside, callable_signature(loss_fn),
            tuple(x.shape), str(x.dtype), tuple(y.shape), str(y.dtype), x.device.type)


def _per_sample(key: tuple) -> tuple[tuple, int] | None:
    """``(key without the batch dimension, batch size)`` of a ``(static key, (x shape(s), y shape))`` key."""
    try:
        static, (x_shape, y_shape) = key
        batch = int(y_shape[0])
        x_rest = (tuple(s[1:] for s in x_shape) if x_shape and isinstance(x_shape[0], tuple) else tuple(x_shape[1:]))
        return (static, x_rest, tuple(y_shape[1:])), batch
    except (TypeError, ValueError, IndexError):
        return None


def cached_step_flops(key: tuple) -> int | None:
    """The step's FLOPs if counted, or derived from two counted batch sizes of the same step: a
    step's products are affine in the batch size (per-sample work plus per-step work), so the last,
    smaller batch of every client needs no count of its own."""
    if key in _STEP_CACHE:
        return _STEP_CACHE[key]
    stored = _disk_get("step", key)
    if stored is not None:
        store_step_flops(key, stored, counted=False)
        return stored
    split = _per_sample(key)
    points = _BY_BATCH.get(split[0]) if split is not None else None
    if split is None or not points or len(points) < 2:
        return None
    (b1, f1), (b2, f2) = sorted(points.items())[-2:]
    return round(f1 + (f2 - f1) * (split[1] - b1) / (b2 - b1))


def store_step_flops(key: tuple, flops: int, *, counted: bool = True) -> None:
    """Keep a step's count (``counted``: measured in this process, so it is also written to disk)."""
    _STEP_CACHE[key] = int(flops)
    if counted:
        _disk_add("step", {key: flops})
    split = _per_sample(key)
    if split is not None:
        _BY_BATCH.setdefault(split[0], {})[split[1]] = int(flops)


def cached_keys() -> tuple[set, set]:
    """The keys of the step and forward caches now (see :func:`counted_since`)."""
    return set(_STEP_CACHE), set(_FORWARD_CACHE)


def counted_since(known: tuple[set, set]) -> tuple[dict, dict]:
    """Step and forward counts added since ``known``: what a worker process sends back to its parent."""
    return ({key: value for key, value in _STEP_CACHE.items() if key not in known[0]},
            {key: value for key, value in _FORWARD_CACHE.items() if key not in known[1]})


def merge_counted(counted: tuple[dict, dict]) -> None:
    """Take in another process's counts (from :func:`counted_since`)."""
    steps, forwards = counted
    for key, value in steps.items():
        store_step_flops(key, value, counted=False)
    _FORWARD_CACHE.update(forwards)
    _disk_add("step", steps)  # the worker does not write the file; the parent does, once per merge
    _disk_add("forward", forwards)


class OpCounter(TorchDispatchMode):
    """Counts the FLOPs of the operators run inside it, as ``torch.utils.flop_counter.FlopCounterMode``
    counts them (the same formulas, the same decomposition of operators without one), in total only.

    Why not FlopCounterMode itself: torch wraps every dispatch mode's handler so that the first call
    imports ``torch._dynamo`` (to keep compilation out of it), 1.3-1.6 s of CPU on this project's
    machine, paid in round 1 by every run and every forked worker that counts anything (server
    aggregation counts every round). This mode opts out of that wrapping (it is never compiled).
    ``custom_mapping``: extra formulas by operator, over shapes, as FlopCounterMode takes them.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self, custom_mapping: dict[Any, Callable[..., int]] | None = None) -> None:
        super().__init__()
        self.registry = {**_torch_flops.flop_registry,
                         **{op: _torch_flops.shape_wrapper(fn) for op, fn in (custom_mapping or {}).items()}}
        self.total = 0

    def get_total_flops(self) -> int:
        return self.total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in self.registry and func is not torch.ops.prim.device.default:
            with self:  # an operator without a formula: count what it decomposes into, if it does
                decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
        out = func(*args, **kwargs)
        if packet in self.registry:
            self.total += int(self.registry[packet](*args, **kwargs, out_val=out))
        return out


def counting() -> OpCounter:
    """A FLOP counter (matrix products and convolutions)."""
    return OpCounter()


def forward_flops(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """FLOPs of ``fn(x)`` without gradients, cached per (structure, input shape). ``fn`` is a module
    (counted in eval mode) or a callable such as a bound ``represent`` (keyed by its code and owner)."""
    is_module = isinstance(fn, nn.Module)
    signature = module_signature(fn) if is_module else callable_signature(fn)
    key = (signature, tuple(x.shape), str(x.dtype), x.device.type)
    if key not in _FORWARD_CACHE:
        stored = _disk_get("forward", key)
        if stored is not None:
            _FORWARD_CACHE[key] = stored
    if key not in _FORWARD_CACHE:
        was_training = fn.training if is_module else False
        if is_module:
            fn.eval()
        try:
            with torch.inference_mode(), counting() as counter:
                fn(x)
        finally:
            if is_module:
                fn.train(was_training)
        _FORWARD_CACHE[key] = int(counter.get_total_flops())
        _disk_add("forward", {key: _FORWARD_CACHE[key]})
    return _FORWARD_CACHE[key]


def evaluation_flops(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, batch_size: int,
                     normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """FLOPs of ``fn`` over ``x`` in batches of ``batch_size`` (as ``accuracy`` and frozen-output passes do);
    ``normalize`` turns stored rows (raw uint8 images) into ``fn``'s input, as ``accuracy`` does."""
    n = int(x.shape[0])
    if n == 0:
        return 0
    prepare = normalize or (lambda rows: rows)
    full, rest = divmod(n, batch_size)
    total = full * forward_flops(fn, prepare(x[:batch_size])) if full else 0
    if rest:
        total += forward_flops(fn, prepare(x[:rest]))
    return total


def _numel(shape: Any) -> int:
    return math.prod(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1


def _elementwise(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _numel(out_shape) if out_shape is not None else 0


def _reduction(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    # one add per input element
    return _numel(args[0]) if args else 0


def _svd(shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    # Golub & Van Loan's count for a thin SVD with U and V of an m x n matrix (m >= n):
    # 4 m n^2 + 22 n^3, per matrix in the batch.
    *batch, rows, cols = shape
    m, n = max(rows, cols), min(rows, cols)
    return math.prod(batch) * (4 * m * n * n + 22 * n ** 3)


_aten = torch.ops.aten
ELEMENTWISE_FLOPS: dict[Any, Callable[..., int]] = {
    **{op: _elementwise for op in (
        _aten.add, _aten.add_, _aten.sub, _aten.sub_, _aten.mul, _aten.mul_, _aten.div, _aten.div_,
        _aten.addcmul, _aten.addcmul_, _aten.addcdiv, _aten.addcdiv_, _aten.lerp, _aten.lerp_,
        _aten.neg, _aten.exp, _aten.log, _aten.sqrt, _aten.pow, _aten.maximum, _aten.minimum)},
    **{op: _reduction for op in (_aten.sum, _aten.mean, _aten.linalg_vector_norm, _aten.norm)},
    _aten._linalg_svd: _svd,
}


def count_server_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """``(fn(*args, **kwargs), FLOPs)``: matrix products, convolutions, SVDs' matmuls and
    elementwise arithmetic executed by ``fn`` (the server's aggregation)."""
    with OpCounter(ELEMENTWISE_FLOPS) as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())


def clear_caches() -> None:
    """Forget every count, in memory and (for the rest of this process) on disk: what follows counts."""
    global _DISK
    _DISK = {"step": {}, "forward": {}}
    _STEP_CACHE.clear()
    _FORWARD_CACHE.clear()
    _BY_BATCH.clear()
