"""pFedLoRA: model-heterogeneous personalized FL with a homogeneous low-rank adapter.

Yi, L., Yu, H., Wang, G., Liu, X., Li, X. "pFedLoRA: Model-Heterogeneous Personalized Federated
Learning with LoRA Tuning." arXiv:2310.13283, 2023.

Each client k keeps its own local model F_k (any architecture in the pool) and one adapter whose
architecture is the same on every client (see :mod:`pfedlora.models.adapters`). In a round, a
selected client receives the global adapter, then with the iterative schedule

1. freezes the adapter and trains F_k (global knowledge flows into the local model), and
2. freezes F_k and trains the adapter (local knowledge flows into the adapter),

and uploads only the adapter. The server averages adapters weighted by the clients' training
sample counts (FedAvg) and broadcasts the result. The ``synchronous`` schedule trains both parts
together for ``train.local_epochs`` (the ablation of open question 1).

On text, ``adapter.placement: lora`` makes the adapter PEFT LoRA tensors (lora_A, lora_B of rank
``adapter.rank``) on the query/value projections of the first K encoder layers, K being the
smallest depth in the pool of pretrained MiniLM encoders; the local model is everything else.
Step 1 then trains the local model with the LoRA tensors frozen, step 2 only the LoRA tensors, and
the upload is exactly the LoRA tensors (same names and shapes on every client).

``adapter.step2_outputs: recorded`` trains step 2 on the frozen local model's outputs recorded
during step 1 instead of recomputing them (one forward pass over the data saved; an approximation,
see the section on it below).

Evaluation uses a client's personalized model: F_k with the adapter it trained last (a client
never selected yet uses the global adapter).

Options (``adapter.*``; all opt-in, the defaults reproduce earlier results bit for bit):

* ``combine`` (branch): ``convex`` (1 - mu) F_k(x) + mu A(x), the default, or ``additive``
  F_k(x) + mu A(x). Head and lora placements are additive by construction (convex is refused).
  The exact frozen-output reuse path mixes with the same rule (:meth:`PersonalizedModel.mix`).
* ``zero_init`` (branch): the adapter's output layer starts at zero; with ``additive`` a fresh
  personalized model then equals its local model bit for bit.
* ``input_pool`` (branch, images): the adapter reads a 2x or 4x average-pooled input (cheap).
  ``describe`` reports the adapter's and the smallest local model's forward+backward FLOPs per
  sample, measured with :mod:`pfedlora.metrics.flops`, and their ratio.
* ``aggregation``: ``factors`` (the default) averages every tensor, each factor of a B.A pair
  separately, which is exact only with one client or when all clients share one factor
  (mean(B) mean(A) != mean(B A) in general). ``product`` averages the weighted products
  W_i = B_i A_i (a conv pair as matrices: A ``rank x (in k k)``, B ``out x rank``) and
  re-factorises the mean by truncated SVD, B = U_r S_r and A = V_r^T (A's rows orthonormal, so no
  rank component is left with both factors zero and no gradient); other tensors are averaged as
  usual. It is exact when the mean product has rank <= r (one client, or the clients' products
  spanning at most r dimensions). The relative Frobenius residual ||mean - B A|| / ||mean||, the
  maximum over pairs, is kept in the server state and reported per round as the metrics column
  ``refactor_residual_max`` (through :attr:`Algorithm.server_metrics`).
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field, model_serializer, model_validator
import torch
import torch.nn.functional as F
from torch import nn

from pfedlora.algorithms.aggregation import WeightedMean, fedavg_aggregate
from pfedlora.algorithms.base import (
    Algorithm,
    ClientData,
    ClientResult,
    FederationContext,
    Payload,
    State,
    TrainStats,
    Upload,
    derive_seed,
    load_into,
    prefixed,
    unprefixed,
)
from pfedlora.algorithms.training import train_epochs
from pfedlora.config import Config
from pfedlora.metrics import flops as flop_count
from pfedlora.models.adapters import (
    PersonalizedModel,
    build_adapter,
    factor_pairs,
    inject_lora,
    is_lora_key,
    lora_depth,
    lora_factor_pairs,
)
from pfedlora.models.cnn import CNN_SPECS
from pfedlora.models.registry import ModelName, parameter_count
from pfedlora.models.text import TEXT_MODEL_SPECS
from pfedlora.registry import AlgorithmSettings, register


class PFedLoRASettings(AlgorithmSettings):
    """pFedLoRA's adapter, the config section ``adapter`` (see :mod:`pfedlora.models.adapters`)."""

    reference: ModelName | None = Field(default=None,
                                  description="Architecture the adapter is derived from; null: the smallest model "
                                              "in the pool.")
    construction: Literal["reduced", "factorized"] = Field(default="reduced",
                                                           description="reduced (hidden widths cut to rank) or "
                                                                       "factorized (each weight a rank-`rank` "
                                                                       "product B.A).")
    # bounded: the adapter's memory and work grow with it (a typo like 16000 is refused up front)
    rank: int = Field(default=16, ge=1, le=1024, description="Adapter rank (at most 1,024).")
    placement: Literal["branch", "head", "lora"] = Field(default="branch",
                                                         description="branch: (1-mu) F_k(x) + mu A(x) (see "
                                                                     "combine); head: LoRA delta on the header, W + "
                                                                     "mu B.A; lora (text): PEFT LoRA on the shared "
                                                                     "encoder layers.")
    # the adapter's weight in the prediction: convex (1 - mu) F_k + mu A needs mu <= 1; additive
    # F_k + mu A (and head, lora) takes any mu >= 0, an output scale
    mu: float = Field(default=0.5, ge=0, description="mu, the adapter's weight in the mix (at most 1 with convex; "
                                                     "with additive, head and lora any value >= 0: an output scale).")
    schedule: Literal["iterative", "synchronous"] = Field(default="iterative",
                                                          description="iterative (local model, then adapter; the "
                                                                      "paper) or synchronous (both at once).")
    # branch: convex (1-mu) F_k(x) + mu A(x) or additive F_k(x) + mu A(x); unset: convex on branch
    # (head and lora are additive by construction, so convex is refused there)
    combine: Literal["convex", "additive"] | None = Field(default=None,
                                                          description="Branch placement: convex (1-mu) F_k(x) + mu "
                                                                      "A(x) or additive F_k(x) + mu A(x) (the LoRA "
                                                                      "reading); null: convex on branch (head and "
                                                                      "lora are additive).")
    # branch: the adapter's output layer (last Linear, weight and bias) starts at exactly zero, as LoRA's B
    zero_init: bool = Field(default=False,
                            description="Branch: the adapter's output layer starts at exactly zero (as LoRA's B), "
                                        "so with additive a fresh personalized model equals its local model.")
    # branch, images: the adapter reads the input average-pooled by this factor (a cheaper adapter)
    input_pool: Literal[1, 2, 4] = Field(default=1,
                                         description="Branch, images: the adapter reads the input average-pooled by "
                                                     "this factor (a cheaper adapter).")
    # B.A factor pairs: factors = FedAvg of each factor; product = mean of B_i A_i re-factorised by SVD
    aggregation: Literal["factors", "product"] = Field(default="factors",
                                                       description="B.A factor pairs: factors (FedAvg of each "
                                                                   "factor) or product (mean of B_i A_i "
                                                                   "re-factorised by truncated SVD).")
    # iterative step 2's frozen local-model outputs: recompute them with the trained local model (the
    # paper), or use those recorded during step 1's last epoch (saves one forward pass over the data)
    step2_outputs: Literal["recompute", "recorded"] = Field(default="recompute",
                                                            description="Iterative step 2's frozen local-model "
                                                                        "outputs: recompute (the paper) or recorded "
                                                                        "in step 1's last epoch (one forward pass "
                                                                        "less; not exact).")
    # the adapter step's learning rate is train.lr times this (LoRA+ style: the adapter may need a
    # larger step than the local model); the local model's step keeps train.lr
    lr_scale: float = Field(default=1.0, gt=0,
                            description="Iterative schedule: the adapter step's learning rate is train.lr times this "
                                        "(written to config.yaml only when set).")
    # the adapter step's weight decay; unset: train.weight_decay (which pulls a small adapter to zero)
    weight_decay: float | None = Field(default=None, ge=0,
                                       description="Iterative schedule: the adapter step's weight decay; null: "
                                                   "train.weight_decay (written to config.yaml only when set).")

    @model_validator(mode="after")
    def _options_fit_placement(self) -> PFedLoRASettings:
        if self.combine_rule == "convex" and self.mu > 1:
            raise ValueError(f"mu {self.mu} > 1 with combine convex ((1 - mu) F_k(x) + mu A(x)); a larger "
                             "adapter weight needs combine: additive")
        if self.schedule == "synchronous" and (self.lr_scale != 1 or self.weight_decay is not None):
            raise ValueError("lr_scale and weight_decay apply to the adapter step of the iterative schedule; the "
                             "synchronous schedule trains both parts in one step with train.lr")
        if self.combine == "convex" and self.placement != "branch":
            raise ValueError(f"combine: convex applies to placement branch; placement {self.placement} adds "
                             "mu times the adapter's delta (additive): leave combine unset or set additive")
        if self.input_pool != 1 and self.placement != "branch":
            raise ValueError(f"input_pool applies to placement branch (the adapter reads the input), not {self.placement}")
        if self.step2_outputs == "recorded" and (self.placement == "lora" or self.schedule != "iterative"):
            raise ValueError("step2_outputs: recorded applies to the iterative schedule with placement branch or head")
        if self.aggregation == "product" and self.placement == "branch" and self.construction == "reduced":
            raise ValueError("aggregation: product needs B.A factor pairs (construction factorized, or placement "
                             "head or lora); the reduced branch adapter has none")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_step_options(self, handler):
        # lr_scale and weight_decay are written only when set, so the config.yaml (and the reuse) of
        # every run made before they existed stays the same
        document = handler(self)
        if self.lr_scale == 1:
            document.pop("lr_scale", None)
        if self.weight_decay is None:
            document.pop("weight_decay", None)
        return document

    @property
    def combine_rule(self) -> str:
        """The combine rule in effect: convex on branch unless set, additive on head and lora."""
        if self.combine is not None:
            return self.combine
        return "convex" if self.placement == "branch" else "additive"


LOCAL = "local_model."
ADAPTER = "adapter."
# server state only (aggregation: product): the last aggregation's worst re-factorisation residual
RESIDUAL = "server.refactor_residual_max"


def adapter_reference(ctx: FederationContext) -> str:
    """``adapter.reference``, else the pool's smallest model of the CNN-1..5 family (the adapter
    constructions are defined on that family), else the pool's smallest model."""
    if ctx.config.adapter.reference:
        return ctx.config.adapter.reference
    family = [arch for arch in dict.fromkeys(ctx.config.model_pool) if arch in CNN_SPECS]
    return min(family, key=ctx.model_parameters) if family else ctx.smallest_model()


def _new_adapter(ctx: FederationContext) -> nn.Module:
    spec = ctx.config.adapter
    return build_adapter(
        reference=adapter_reference(ctx),
        construction=spec.construction,
        placement=spec.placement,
        rank=spec.rank,
        in_channels=ctx.in_channels,
        num_classes=ctx.num_classes,
        image_size=ctx.image_size,
        text=ctx.text,
        zero_init=spec.zero_init,
        input_pool=spec.input_pool,
    )


def _adapter_workspace(ctx: FederationContext) -> nn.Module:
    return ctx.cached_module(("pfedlora-adapter",), lambda: _new_adapter(ctx))


# ---- lora placement: the adapter lives inside the local model (PEFT LoRA layers)


def _uses_lora(ctx: FederationContext) -> bool:
    return ctx.config.adapter.placement == "lora"


def _lora_model(ctx: FederationContext, arch: str, seed: int) -> nn.Module:
    archs = sorted({ctx.client_arch(k) for k in range(ctx.config.num_clients)} | set(ctx.config.model_pool))
    model = ctx.new_model(arch, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "lora"))
        return inject_lora(model, ctx.config.adapter.rank, lora_depth(archs)).to(ctx.device)


def _lora_workspace(ctx: FederationContext, arch: str) -> nn.Module:
    return ctx.cached_module(("pfedlora-lora", arch), lambda: _lora_model(ctx, arch, seed=0))


def _split_lora(state: dict[str, torch.Tensor]) -> tuple[State, State]:
    """(local model part, LoRA adapter part) of a LoRA-injected model's state."""
    return ({k: v for k, v in state.items() if not is_lora_key(k)},
            {k: v for k, v in state.items() if is_lora_key(k)})


def _local_workspace(ctx: FederationContext, client_id: int) -> nn.Module:
    arch = ctx.client_arch(client_id)
    return ctx.cached_module(("model", arch), lambda: ctx.new_model(arch, seed=0))


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    if _uses_lora(ctx):
        lora = _split_lora(_lora_model(ctx, adapter_reference(ctx), derive_seed(ctx.config.seed, "adapter")).state_dict())[1]
        global_adapter = prefixed("", lora)
        return _server_state(ctx, global_adapter, residual=0.0), dict(global_adapter)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.config.seed, "adapter"))
        adapter = _new_adapter(ctx)
    global_adapter = prefixed("", adapter.state_dict())
    return _server_state(ctx, global_adapter, residual=0.0), dict(global_adapter)


def _server_state(ctx: FederationContext, global_adapter: State, residual: float) -> State:
    """The global adapter, plus the re-factorisation residual when aggregating products."""
    if ctx.config.adapter.aggregation != "product":
        return global_adapter
    device = next(iter(global_adapter.values())).device
    return global_adapter | {RESIDUAL: torch.tensor(residual, dtype=torch.float32, device=device)}


def init_client(ctx: FederationContext, client_id: int) -> State:
    if _uses_lora(ctx):
        model = _lora_model(ctx, ctx.client_arch(client_id), derive_seed(ctx.config.seed, "client", client_id))
        return prefixed(LOCAL, _split_lora(model.state_dict())[0])
    model = ctx.new_model(ctx.client_arch(client_id), seed=derive_seed(ctx.config.seed, "client", client_id))
    return prefixed(LOCAL, model.state_dict())


def _personalized(ctx: FederationContext, client_id: int, local_state: State, adapter_state: State) -> nn.Module:
    if _uses_lora(ctx):
        return load_into(_lora_workspace(ctx, ctx.client_arch(client_id)), local_state | adapter_state)
    local_model = load_into(_local_workspace(ctx, client_id), local_state)
    adapter = load_into(_adapter_workspace(ctx), adapter_state)
    return PersonalizedModel(local_model, adapter, ctx.config.adapter.mu, ctx.config.adapter.placement,
                             combine=ctx.config.adapter.combine_rule)


def client_update(
    ctx: FederationContext,
    client_id: int,
    state: State,
    broadcast: Payload,
    data: ClientData,
    generator: torch.Generator,
) -> ClientResult:
    cfg = ctx.config
    # the received global adapter replaces the client's previous one: step 1 trains with it
    model = _personalized(ctx, client_id, unprefixed(LOCAL, state), broadcast)
    if _uses_lora(ctx):
        local_params = [p for n, p in model.named_parameters() if not is_lora_key(n)]
        adapter_params = [p for n, p in model.named_parameters() if is_lora_key(n)]
    else:
        local_params, adapter_params = list(model.local_model.parameters()), list(model.adapter.parameters())
    common = dict(train=cfg.train, generator=generator)
    if cfg.adapter.schedule == "iterative" and cfg.adapter.step2_outputs == "recorded":
        stats = _iterative_recording(ctx, model, local_params, adapter_params, data, common)
    elif cfg.adapter.schedule == "iterative" and _can_reuse_frozen(ctx, model, data):
        stats = _iterative_reusing_frozen(ctx, model, local_params, adapter_params, data, common)
    elif cfg.adapter.schedule == "iterative":
        stats = [
            train_epochs(model, local_params, data.train_x, data.train_y, augment=data.augment,
                         epochs=cfg.train.local_epochs, name="local_model", **common),
            train_epochs(model, adapter_params, data.train_x, data.train_y, augment=data.augment,
                         epochs=cfg.train.adapter_epochs, name="adapter", **_adapter_step(ctx, common)),
        ]
    else:
        stats = [train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment,
                              epochs=cfg.train.local_epochs, name="local_model+adapter", **common)]
    if _uses_lora(ctx):
        local_state, adapter_state = (prefixed("", part) for part in _split_lora(model.state_dict()))
    else:
        local_state, adapter_state = prefixed("", model.local_model.state_dict()), prefixed("", model.adapter.state_dict())
    new_state = prefixed(LOCAL, local_state) | prefixed(ADAPTER, adapter_state)
    return ClientResult(state=new_state, upload=adapter_state, weight=float(data.num_train), stats=stats)


def _adapter_step(ctx: FederationContext, common: dict) -> dict:
    """The training arguments of the adapter step: ``common`` with the learning rate times
    ``adapter.lr_scale`` and the weight decay ``adapter.weight_decay`` where set."""
    spec, train = ctx.config.adapter, ctx.config.train
    update = {}
    if spec.lr_scale != 1:
        update["lr"] = train.lr * spec.lr_scale
    if spec.weight_decay is not None:
        update["weight_decay"] = spec.weight_decay
    return dict(common, train=train.model_copy(update=update)) if update else common


# ---- exact reuse of a frozen part's outputs (iterative schedule, no augmentation)
#
# While one part is frozen its outputs depend on the (unaugmented) inputs only, so they are computed
# once per step in large no-grad batches instead of in every mini-batch's forward and backward.
# Same batches, same losses and gradients up to float summation order. With train.precision bf16
# the outputs are computed under the training loop's bf16 autocast, as the plain path computes them.


def _can_reuse_frozen(ctx: FederationContext, model: nn.Module, data: ClientData) -> bool:
    if not ctx.config.engine.reuse_frozen or data.augment is not None or _uses_lora(ctx):
        return False
    # a frozen part is a function of its input only without dropout or batch statistics
    stochastic = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.modules.batchnorm._BatchNorm)
    return not any(isinstance(m, stochastic) for m in model.modules())


def _training_autocast(precision: str, x: torch.Tensor) -> torch.autocast:
    """The autocast the training loop runs forwards under (pfedlora.algorithms.training.train_epochs)."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _frozen_outputs(fn, x: torch.Tensor, batch_size: int, stats: TrainStats, precision: str = "fp32") -> torch.Tensor:
    """``fn(x)`` without gradients, in batches, under the training precision's autocast; its FLOPs
    are added to ``stats``."""
    with torch.no_grad(), _training_autocast(precision, x):
        out = torch.cat([fn(x[i : i + batch_size]) for i in range(0, int(x.shape[0]), batch_size)])
        # counted once per (structure, batch shape) and cached: a counter around every pass cost ~5% of a client
        stats.flops += flop_count.evaluation_flops(fn, x, batch_size)
    return out


def _branch_loss_adapter_cached(model: PersonalizedModel, xb: tuple[torch.Tensor, torch.Tensor], yb: torch.Tensor) -> torch.Tensor:
    inputs, adapter_out = xb
    return F.cross_entropy(model.mix(model.local_model(inputs), adapter_out), yb)


def _branch_loss_local_cached(model: PersonalizedModel, xb: tuple[torch.Tensor, torch.Tensor], yb: torch.Tensor) -> torch.Tensor:
    inputs, local_out = xb
    return F.cross_entropy(model.mix(local_out, model.adapter(inputs)), yb)


def _head_loss_local_cached(model: PersonalizedModel, xb: tuple[torch.Tensor, torch.Tensor], yb: torch.Tensor) -> torch.Tensor:
    representation, head_out = xb
    return F.cross_entropy(model.mix(head_out, model.adapter(representation)), yb)


def _iterative_reusing_frozen(ctx: FederationContext, model: PersonalizedModel, local_params: list, adapter_params: list,
                              data: ClientData, common: dict) -> list[TrainStats]:
    cfg = ctx.config
    # the training batch size: larger no-grad batches measured slower per sample on CPU
    batch, precision = cfg.train.batch_size, cfg.train.precision
    x, y = data.train_x, data.train_y
    pre_local, pre_adapter = TrainStats(), TrainStats()
    if cfg.adapter.placement == "branch" and cfg.train.local_epochs > 0 and data.num_train:
        # step 1: the adapter is frozen and sees the raw input
        adapter_out = _frozen_outputs(model.adapter, x, batch, pre_local, precision)
        step1 = train_epochs(model, local_params, (x, adapter_out), y, epochs=cfg.train.local_epochs,
                             loss_fn=_branch_loss_adapter_cached, name="local_model", **common)
    else:  # head placement: the frozen adapter reads the representation being trained
        step1 = train_epochs(model, local_params, x, y, epochs=cfg.train.local_epochs, name="local_model", **common)
    if cfg.train.adapter_epochs > 0 and data.num_train:
        # step 2: the local model is frozen
        if cfg.adapter.placement == "branch":
            local_out = _frozen_outputs(model.local_model, x, batch, pre_adapter, precision)
            step2 = train_epochs(model, adapter_params, (x, local_out), y, epochs=cfg.train.adapter_epochs,
                                 loss_fn=_branch_loss_local_cached, name="adapter", **_adapter_step(ctx, common))
        else:
            representation = _frozen_outputs(model.local_model.represent, x, batch, pre_adapter, precision)
            head_out = _frozen_outputs(model.local_model.head, representation, batch, pre_adapter, precision)
            step2 = train_epochs(model, adapter_params, (representation, head_out), y, epochs=cfg.train.adapter_epochs,
                                 loss_fn=_head_loss_local_cached, name="adapter", **_adapter_step(ctx, common))
    else:
        step2 = train_epochs(model, adapter_params, x, y, epochs=cfg.train.adapter_epochs, name="adapter", **_adapter_step(ctx, common))
    step1.flops += pre_local.flops
    step2.flops += pre_adapter.flops
    return [step1, step2]


# ---- adapter.step2_outputs: recorded (step 2 on the local model's outputs recorded in step 1)
#
# Step 2 needs the frozen local model's output of every training sample (branch: its logits; head:
# its representation and header output). Recomputing them with the trained local model costs one
# forward pass over the data, about 0.37x a Standalone round on CNN-1..5. Step 1 computes them
# anyway, one mini-batch at a time: each sample's output from the local model as it was just
# before that mini-batch's update in the last local epoch. This variant keeps those (at most one
# epoch stale) and trains the adapter on them. Not exact: a cost-saving approximation of the paper.


class _Recorder:
    """Per-sample outputs that step 1's loss writes and step 2 reads (one buffer per name)."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.outputs: dict[str, torch.Tensor] = {}

    def write(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        if name not in self.outputs:
            self.outputs[name] = torch.zeros((self.num_samples, *values.shape[1:]), dtype=values.dtype,
                                             device=values.device)
        self.outputs[name][rows] = values.detach()


def _branch_loss_recording(recorder: _Recorder, model: PersonalizedModel,
                           xb: tuple[torch.Tensor, torch.Tensor, torch.Tensor], yb: torch.Tensor) -> torch.Tensor:
    inputs, adapter_out, rows = xb
    local_out = model.local_model(inputs)
    recorder.write("local_out", rows, local_out)
    return F.cross_entropy(model.mix(local_out, adapter_out), yb)


def _head_loss_recording(recorder: _Recorder, model: PersonalizedModel,
                         xb: tuple[torch.Tensor, torch.Tensor], yb: torch.Tensor) -> torch.Tensor:
    inputs, rows = xb
    representation = model.local_model.represent(inputs)
    head_out = model.local_model.head(representation)
    recorder.write("representation", rows, representation)
    recorder.write("head_out", rows, head_out)
    return F.cross_entropy(model.mix(head_out, model.adapter(representation)), yb)


def _iterative_recording(ctx: FederationContext, model: PersonalizedModel, local_params: list, adapter_params: list,
                         data: ClientData, common: dict) -> list[TrainStats]:
    cfg = ctx.config
    x, y = data.train_x, data.train_y
    rows = torch.arange(int(y.shape[0]), device=y.device)
    recorder = _Recorder(int(y.shape[0]))
    recorded = recorder.outputs
    pre_local = TrainStats()
    if cfg.adapter.placement == "branch":
        # the frozen adapter sees the raw input: its outputs once, as on the exact reuse path
        adapter_out = _frozen_outputs(model.adapter, x, cfg.train.batch_size, pre_local, cfg.train.precision)
        step1 = train_epochs(model, local_params, (x, adapter_out, rows), y, epochs=cfg.train.local_epochs,
                             loss_fn=functools.partial(_branch_loss_recording, recorder), name="local_model", **common)
    else:
        step1 = train_epochs(model, local_params, (x, rows), y, epochs=cfg.train.local_epochs,
                             loss_fn=functools.partial(_head_loss_recording, recorder), name="local_model", **common)
    step1.flops += pre_local.flops
    if cfg.train.local_epochs == 0 or not data.num_train:  # nothing recorded: step 2 as on the exact path
        pre_adapter = TrainStats()
        if cfg.adapter.placement == "branch":
            recorded["local_out"] = _frozen_outputs(model.local_model, x, cfg.train.batch_size, pre_adapter,
                                                    cfg.train.precision)
        else:
            recorded["representation"] = _frozen_outputs(model.local_model.represent, x, cfg.train.batch_size,
                                                         pre_adapter, cfg.train.precision)
            recorded["head_out"] = _frozen_outputs(model.local_model.head, recorded["representation"],
                                                   cfg.train.batch_size, pre_adapter, cfg.train.precision)
    if cfg.adapter.placement == "branch":
        step2 = train_epochs(model, adapter_params, (x, recorded["local_out"]), y, epochs=cfg.train.adapter_epochs,
                             loss_fn=_branch_loss_local_cached, name="adapter", **_adapter_step(ctx, common))
    else:
        step2 = train_epochs(model, adapter_params, (recorded["representation"], recorded["head_out"]), y,
                             epochs=cfg.train.adapter_epochs, loss_fn=_head_loss_local_cached, name="adapter", **_adapter_step(ctx, common))
    if cfg.train.local_epochs == 0 or not data.num_train:
        step2.flops += pre_adapter.flops
    return [step1, step2]


# ---- aggregation: FedAvg of the factors (default) or of the B.A products


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    """The sample-weighted mean of the uploaded adapters (``adapter.aggregation``: of each factor, or
    of each B.A product, re-factorised)."""
    if ctx.config.adapter.aggregation == "factors":
        return fedavg_aggregate(ctx, server_state, uploads)
    global_adapter = {name: tensor for name, tensor in server_state.items() if name != RESIDUAL}
    if not uploads:  # the previous global adapter (and its residual) is kept
        return server_state, dict(global_adapter)
    averaged, residuals = product_mean(uploads, _factor_pairs(ctx), like=global_adapter)
    return _server_state(ctx, averaged, residual=max(residuals, default=0.0)), dict(averaged)


def _factor_pairs(ctx: FederationContext) -> list[tuple[str, str]]:
    if _uses_lora(ctx):
        return lora_factor_pairs(list(_split_lora(_lora_workspace(ctx, adapter_reference(ctx)).state_dict())[1]))
    return factor_pairs(_adapter_workspace(ctx))


def product_mean(uploads: list[Upload], pairs: list[tuple[str, str]], like: Payload) -> tuple[Payload, list[float]]:
    """The weighted mean of the uploads where each ``(B, A)`` pair is averaged as its product B.A and
    re-factorised to the pair's rank by truncated SVD; every other tensor is FedAvg'd. Also returns
    each pair's relative Frobenius residual ||mean - B'A'|| / ||mean||. Output dtypes follow ``like``."""
    factors = {name for pair in pairs for name in pair}
    others, products = WeightedMean(), WeightedMean()
    for upload in uploads:
        others.add({k: v for k, v in upload.payload.items() if k not in factors}, upload.weight)
        products.add({b: _as_matrix(upload.payload[b]) @ _as_matrix(upload.payload[a]) for b, a in pairs},
                     upload.weight)
    averaged = others.result(like)
    # float64 products (the sums are float64 already): the SVD and the residual in full precision
    mean_products = products.result({b: torch.empty((), dtype=torch.float64) for b, _ in pairs})
    residuals = []
    for b, a in pairs:
        rank = like[a].shape[0]
        new_b, new_a, residual = refactorize(mean_products[b], rank)
        averaged[b] = new_b.reshape(like[b].shape).to(like[b].dtype)
        averaged[a] = new_a.reshape(like[a].shape).to(like[a].dtype)
        residuals.append(residual)
    return {name: averaged[name] for name in like}, residuals


def _as_matrix(factor: torch.Tensor) -> torch.Tensor:
    """A factor as a float64 matrix: B ``out x rank (x 1 x 1)`` -> ``out x rank``,
    A ``rank x in (x k x k)`` -> ``rank x (in k k)``."""
    return factor.detach().to(torch.float64).reshape(factor.shape[0], -1)


def refactorize(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(B, A, residual)``: B = U_r S_r (``m x rank``), A = V_r^T (``rank x n``), the best rank-``rank``
    approximation of ``matrix`` (Eckart-Young), and its relative Frobenius residual, exactly
    sqrt(sum of the discarded S^2) / ||matrix|| (0 when nothing is discarded or the matrix is 0).

    When ``rank`` exceeds min(m, n), B's extra columns are zero and A's extra rows are the next
    right singular vectors (an orthonormal complement; zero rows once n runs out), so those
    components still receive gradient through B, as a LoRA component with B = 0 does.
    """
    m, n = matrix.shape
    full = rank > min(m, n)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=full)
    keep = min(rank, s.shape[0])
    b = matrix.new_zeros(m, rank)
    b[:, :keep] = u[:, :keep] * s[:keep]
    a = matrix.new_zeros(rank, n)
    rows = min(rank, vh.shape[0])
    a[:rows] = vh[:rows]
    total = float(torch.linalg.vector_norm(s))
    residual = float(torch.linalg.vector_norm(s[keep:])) / total if total > 0 else 0.0
    return b, a, residual


def server_metrics(ctx: FederationContext, server_state: State) -> dict[str, float]:
    """Per-round facts of the server state for metrics.csv: the re-factorisation residual (product)."""
    if RESIDUAL not in server_state:
        return {}
    return {"refactor_residual_max": float(server_state[RESIDUAL])}


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    adapter_state = unprefixed(ADAPTER, state) or broadcast
    return _personalized(ctx, client_id, unprefixed(LOCAL, state), adapter_state)


# ---- adapter activity (Algorithm.evaluation_metrics)


def evaluation_metrics(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                       data: ClientData) -> dict[str, float]:
    """How much the adapter does in a client's personalized model, on its evaluation split.

    The prediction is a sum of two terms, the local model's and the adapter's: branch
    ``F_k(x) + mu A(x)`` (convex: ``(1 - mu) F_k(x) + mu A(x)``), head ``head(h) + mu B A h``, lora
    ``F_k(x) + delta(x)`` with ``delta`` the change of the logits that the LoRA tensors make (measured
    as the logits minus the logits with every lora_B set to zero: one more forward pass).

    * ``adapter_share``: ||adapter term|| / ||local term|| over the split's logits (Frobenius norms
      over all samples and classes, i.e. the ratio of the terms' root-mean-square per-sample norms),
      in percent. 0: the adapter adds nothing.
    * ``adapter_flips``: the percentage of evaluation samples whose predicted class changes when the
      adapter is removed (the prediction of ``F_k`` alone against the personalized model's).
    """
    model = personalized_model(ctx, client_id, state, broadcast)
    batch = ctx.config.train.eval_batch_size
    n = int(data.test_y.shape[0])
    if n == 0:
        return {}
    inputs = [data.test_x[i : i + batch] for i in range(0, n, batch)]
    if data.normalize is not None:
        inputs = [data.normalize(rows) for rows in inputs]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            pairs = _lora_terms(ctx, model, state, inputs) if _uses_lora(ctx) else [_terms(model, x) for x in inputs]
    finally:
        model.train(was_training)
    local_sq = sum(float(local.double().square().sum()) for local, _, _, _ in pairs)
    adapter_sq = sum(float(term.double().square().sum()) for _, term, _, _ in pairs)
    flips = sum(int((full.argmax(dim=1) != alone.argmax(dim=1)).sum()) for _, _, full, alone in pairs)
    if local_sq > 0:
        share = 100.0 * (adapter_sq / local_sq) ** 0.5
    else:  # convex with mu = 1: the prediction is the adapter's alone
        share = 0.0 if adapter_sq == 0 else float("inf")
    return {"adapter_share": share, "adapter_flips": 100.0 * flips / n}


def _terms(model: PersonalizedModel, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(local term, adapter term, prediction, local model's output) of the branch or head personalized
    model on ``x``; the local model alone predicts argmax F_k(x)."""
    if model.placement == "head":
        representation = model.local_model.represent(x)
        local_out, adapter_out = model.local_model.head(representation), model.adapter(representation)
    else:
        local_out, adapter_out = model.local_model(x), model.adapter(x)
    convex = model.placement == "branch" and model.combine == "convex"
    return (1.0 - model.mu) * local_out if convex else local_out, model.mu * adapter_out, model.mix(local_out, adapter_out), local_out


def _lora_terms(ctx: FederationContext, model: nn.Module, state: State,
                inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    full = [model(x) for x in inputs]
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    without = {name: torch.zeros_like(t) if ".lora_B." in name else t for name, t in weights.items()}
    load_into(model, without)
    try:
        base = [model(x) for x in inputs]
    finally:
        load_into(model, weights)
    return [(b, f - b, f, b) for b, f in zip(base, full)]


def describe(ctx: FederationContext) -> dict:
    if _uses_lora(ctx):
        reference = _lora_workspace(ctx, adapter_reference(ctx))
        return {
            "adapter_reference": adapter_reference(ctx),
            "adapter_parameters": sum(p.numel() for n, p in reference.named_parameters() if is_lora_key(n)),
        }
    facts = {
        "adapter_reference": adapter_reference(ctx),
        "adapter_parameters": parameter_count(_adapter_workspace(ctx)),
    }
    if ctx.text is None:  # measured on image inputs (a text adapter's cost depends on the token lengths)
        facts |= adapter_cost(ctx)
    return facts


def adapter_cost(ctx: FederationContext) -> dict:
    """Forward+backward FLOPs per sample of training the adapter alone and the pool's cheapest local
    model alone (measured with the FLOP counter on fresh modules), and their ratio."""
    images = torch.randn(2, *ctx.input_shape, device=ctx.device)
    archs = sorted({ctx.client_arch(k) for k in range(ctx.config.num_clients)})
    local = {arch: _training_flops_per_sample(ctx.new_model(arch, seed=0), images) for arch in archs}
    cheapest = min(archs, key=lambda arch: local[arch])
    with torch.random.fork_rng(devices=[]):
        adapter = _new_adapter(ctx).to(ctx.device)
    # head placement: the adapter reads the representation, not the image
    inputs = torch.randn(2, adapter.lora_A.shape[1], device=ctx.device) if ctx.config.adapter.placement == "head" else images
    adapter_flops = _training_flops_per_sample(adapter, inputs)
    return {
        "adapter_flops_per_sample": adapter_flops,
        "smallest_local_model": cheapest,
        "smallest_local_flops_per_sample": local[cheapest],
        "adapter_to_smallest_local_flops": adapter_flops / local[cheapest],
    }


def _training_flops_per_sample(module: nn.Module, inputs: torch.Tensor) -> int:
    """Forward+backward FLOPs per sample of one training step of all of ``module``'s parameters."""
    with flop_count.counting() as counter:
        module(inputs).sum().backward()
    return int(counter.get_total_flops()) // int(inputs.shape[0])


ALGORITHM = Algorithm(
    name="pfedlora",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    describe=describe,
    server_metrics=server_metrics,
    evaluation_metrics=evaluation_metrics,
    # FedAvg of the factors is a mean of uploads (DP, SecAgg+); a re-factorised mean of products is not
    averages_uploads=lambda config: config.adapter.aggregation == "factors",
)


def check_config(config: Config) -> None:
    """Adapter settings that depend on the data and the model pool."""
    adapter = config.adapter
    if adapter.step2_outputs == "recorded" and config.dataset.augment:
        raise ValueError("adapter.step2_outputs: recorded needs unaugmented inputs (step 1's outputs are reused "
                         "in step 2); set dataset.augment false or adapter.step2_outputs recompute")
    if adapter.placement == "lora":
        pretrained = sorted(name for name, spec in TEXT_MODEL_SPECS.items() if spec.pretrained)
        archs = list(dict.fromkeys(config.model_pool + (config.client_models or [])))
        bad = [arch for arch in archs if arch not in pretrained]
        if bad:
            raise ValueError(f"adapter.placement lora needs pretrained text encoders ({', '.join(pretrained)}) "
                             f"in the pool, got {bad[0]!r}")


# the section keeps its historical name `adapter`; every config written so far carries it
register(ALGORITHM, settings=PFedLoRASettings, section="adapter", always_written=True, check_config=check_config)
