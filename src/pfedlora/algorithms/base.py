"""The algorithm interface: a few pure-ish functions over payloads (named tensor dicts).

A runtime (the in-process simulator, the Flower apps) moves payloads between these functions and
never names an algorithm:

* ``init_server(ctx) -> (server_state, broadcast)``
* ``init_client(ctx, client_id) -> client_state``
* ``client_update(ctx, client_id, client_state, broadcast, data, generator) -> ClientResult``
  (new client state, the upload payload, the sample weight for aggregation, training stats)
* ``aggregate(ctx, server_state, uploads) -> (server_state, broadcast)``
* ``personalized_model(ctx, client_id, client_state, broadcast) -> nn.Module`` used for evaluation
* optional ``upload_spec(ctx, broadcast) -> UploadSpec | None``: what a valid upload looks like,
  checked by the server's validator (:mod:`pfedlora.federation.validation`) before aggregation
* optional ``evaluation_metrics(ctx, client_id, client_state, broadcast, data) -> dict[str, float]``:
  diagnostics of the personalized model on the client's evaluation split, measured beside its
  accuracy; the runtimes average each key over the evaluated clients into the metrics row

States and payloads are ``dict[str, Tensor]`` so they can be checkpointed, measured in bytes and
sent over the wire as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pfedlora.config import Config
from pfedlora.models.registry import build_model, parameter_count

Payload = dict[str, torch.Tensor]
State = dict[str, torch.Tensor]


@dataclass
class ClientData:
    """One client's local data, already on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    # training-time augmentation (``dataset.augment``), applied per mini-batch by the training loop
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    # evaluation rows kept raw (uint8 images, a quarter of float32's memory): ``normalize`` makes a
    # batch of them model input; None when ``test_x`` already is model input
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def num_train(self) -> int:
        return int(self.train_y.shape[0])


@dataclass
class TrainStats:
    """What one call of the training loop did; the batch sizes let cost accounting count FLOPs."""

    module: str = ""
    num_samples: int = 0
    num_steps: int = 0
    loss_sum: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    # forward+backward FLOPs of all steps, measured (pfedlora.metrics.flops)
    flops: int = 0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.num_steps, 1)


@dataclass
class ClientResult:
    state: State
    upload: Payload
    weight: float
    stats: list[TrainStats] = field(default_factory=list)


@dataclass
class Upload:
    client_id: int
    payload: Payload
    weight: float


def _words(part: int | str) -> list[int]:
    """SeedSequence entropy words for one part: an int as itself; a string as a marker word and its
    whole SHA-256 digest (eight 32-bit words), so no two tags share a seed however they begin."""
    if isinstance(part, int):
        return [part]
    digest = hashlib.sha256(part.encode()).digest()
    return [_STRING_MARKER, *(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4))]


_STRING_MARKER = 0x5EED5EED  # separates a string's words from neighbouring int parts


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts``, a function of the values alone (clients can run in any order).

    Strings are hashed whole: until 2026-11-30 (commit cd07257) only their first 4 bytes counted,
    so "global_header" and "global_model" (and "train"/"trained") gave the same seed.
    """
    words = [word for part in parts for word in _words(part)]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class FederationContext:
    """What an algorithm may know about the federation: the config, data shapes, model builders.

    Modules are cached per architecture so loading a client's state does not rebuild a model.
    """

    def __init__(self, config: Config, input_shape: tuple[int, ...], num_classes: int, device: torch.device,
                 text: object | None = None):
        self.config = config
        self.input_shape = input_shape
        # text datasets: the TextSpec (vocab size, max length, pad id) text models are built from
        self.text = text
        self.num_classes = num_classes
        self.device = device
        self._module_cache: dict[str, nn.Module] = {}

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def image_size(self) -> int:
        return self.input_shape[-1]

    def client_arch(self, client_id: int) -> str:
        return self.config.client_model(client_id)

    def smallest_model(self) -> str:
        """The pool's model with the fewest parameters (the default adapter/shared-model reference)."""
        return min(dict.fromkeys(self.config.model_pool), key=self.model_parameters)

    def model_parameters(self, arch: str) -> int:
        return parameter_count(self.cached_module(("model", arch), lambda: self.new_model(arch, seed=0)))

    def new_model(self, arch: str, seed: int) -> nn.Module:
        """A freshly initialised model, deterministic in ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(arch, self.in_channels, self.num_classes, self.image_size, text=self.text)
        if self.config.engine.channels_last:  # only 4-d (convolution) weights change layout
            model = model.to(memory_format=torch.channels_last)
        return model.to(self.device)

    def cached_module(self, key: object, factory: Callable[[], nn.Module]) -> nn.Module:
        """A reusable module instance per key; callers load the state they need into it."""
        cache_key = repr(key)
        if cache_key not in self._module_cache:
            self._module_cache[cache_key] = factory().to(self.device)
        return self._module_cache[cache_key]


@dataclass(frozen=True)
class TensorSpec:
    """What one uploaded tensor must look like.

    ``shape``: exact shape; an entry ``None`` is a free dimension (rank still checked); ``shape``
    itself ``None`` accepts any shape. ``max_numel`` bounds the element count when the shape is
    not fully fixed (an upload larger than that is "oversized"). ``optional`` tensors may be
    absent (e.g. FedKD sends a tensor either dense or as SVD factors).
    """

    shape: tuple[int | None, ...] | None
    dtype: torch.dtype
    max_numel: int | None = None
    optional: bool = False


# tensor name -> spec; every non-optional key is required and no other key is accepted
UploadSpec = dict[str, TensorSpec]


def spec_like(payload: Payload) -> UploadSpec:
    """The spec "same keys, shapes and dtypes as ``payload``"."""
    return {name: TensorSpec(tuple(tensor.shape), tensor.dtype) for name, tensor in payload.items()}


@dataclass(frozen=True)
class Algorithm:
    name: str
    init_server: Callable[[FederationContext], tuple[State, Payload]]
    init_client: Callable[[FederationContext, int], State]
    client_update: Callable[[FederationContext, int, State, Payload, ClientData, torch.Generator], ClientResult]
    aggregate: Callable[[FederationContext, State, list[Upload]], tuple[State, Payload]]
    personalized_model: Callable[[FederationContext, int, State, Payload], nn.Module]
    # extra facts for summary.json (e.g. adapter parameter count)
    describe: Callable[[FederationContext], dict] = lambda ctx: {}
    # What a valid upload looks like, given the round's broadcast. None (the field, or the value it
    # returns) means "same keys, shapes and dtypes as the broadcast" (FedAvg-style algorithms).
    # Override it when uploads differ from the broadcast, e.g. per-class prototypes
    # ``{"protos": TensorSpec((C, None), torch.float32), "counts": TensorSpec((C,), torch.float32)}``
    # or SVD factors with a varying rank: ``TensorSpec((d, None), torch.float32, max_numel=d * r_max)``.
    upload_spec: Callable[[FederationContext, Payload], UploadSpec | None] | None = None
    # Rules the spec cannot state tensor by tensor (e.g. "each weight dense or as U, S and V of one
    # rank"): given the broadcast and an upload that passed its spec, a one-line reason it is
    # malformed, or None. The server's validator rejects the upload with that reason.
    check_upload: Callable[[FederationContext, Payload, Payload], str | None] | None = None
    # Facts of the server state after a round's aggregation, added to that round's metrics row
    # (e.g. a re-factorisation residual); the same keys every round.
    server_metrics: Callable[[FederationContext, State], dict[str, float]] = lambda ctx, server_state: {}
    # Diagnostics of one client's personalized model on its evaluation split (``data.test_x``, ``test_y``,
    # ``normalize``), measured beside its accuracy at every evaluated round (e.g. pFedLoRA's adapter
    # share); the same keys every round. A runtime calls it for each client with a non-empty evaluation
    # split and writes the mean of each key over those clients into the metrics row (and the last
    # round's as ``final_<key>`` into summary.json). None: nothing. Inference only: it must not change
    # the state or draw random numbers, so a run's other numbers do not depend on it. Its forward
    # passes are a diagnostic and are not counted in the evaluation FLOPs.
    evaluation_metrics: Callable[[FederationContext, int, State, Payload, ClientData], dict[str, float]] | None = None
    # True when, under this config, the upload has the broadcast's keys, shapes and float dtypes and
    # ``aggregate`` makes the broadcast the weighted mean of the uploads, tensor by tensor. Only then
    # can a runtime bound one client's influence by clipping ``upload - broadcast`` (client-level DP)
    # or aggregate masked sums (SecAgg+): see pfedlora.federation.privacy.
    averages_uploads: Callable[[Config], bool] = lambda config: False

    def expected_upload(self, ctx: FederationContext, broadcast: Payload) -> UploadSpec:
        """The upload spec the server validates against this round."""
        spec = self.upload_spec(ctx, broadcast) if self.upload_spec is not None else None
        return spec_like(broadcast) if spec is None else spec

    def upload_check(self, ctx: FederationContext, broadcast: Payload) -> Callable[[Payload], str | None] | None:
        """The round's extra upload rule for the validator (None: the spec is the whole rule)."""
        if self.check_upload is None:
            return None
        check = self.check_upload
        return lambda payload: check(ctx, broadcast, payload)


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{prefix + name: tensor}`` with tensors detached and cloned (safe to keep across rounds)."""
    return {f"{prefix}{name}": tensor.detach().clone() for name, tensor in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def load_into(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    module.load_state_dict(state, strict=True)
    return module
