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

Evaluation uses a client's personalized model: F_k with the adapter it trained last (a client
never selected yet uses the global adapter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pfedlora.algorithms.aggregation import fedavg_aggregate
from pfedlora.algorithms.base import (
    Algorithm,
    ClientData,
    ClientResult,
    FederationContext,
    Payload,
    State,
    TrainStats,
    derive_seed,
    load_into,
    prefixed,
    unprefixed,
)
from pfedlora.algorithms.training import train_epochs
from pfedlora.metrics import flops as flop_count
from pfedlora.models.adapters import PersonalizedModel, build_adapter, inject_lora, is_lora_key, lora_depth
from pfedlora.models.cnn import CNN_SPECS
from pfedlora.models.registry import parameter_count

LOCAL = "local_model."
ADAPTER = "adapter."


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
        return global_adapter, dict(global_adapter)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.config.seed, "adapter"))
        adapter = _new_adapter(ctx)
    global_adapter = prefixed("", adapter.state_dict())
    return global_adapter, dict(global_adapter)


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
    return PersonalizedModel(local_model, adapter, ctx.config.adapter.mu, ctx.config.adapter.placement)


def client_update(
    ctx: FederationContext,
    client_id: int,
    state: State,
    broadcast: Payload,
    data: ClientData,
    generator: torch.Generator,
) -> ClientResult:
    cfg = ctx.config
    # the received global adapter replaces the client's previous one
    model = _personalized(ctx, client_id, unprefixed(LOCAL, state), broadcast)
    if _uses_lora(ctx):
        local_params = [p for n, p in model.named_parameters() if not is_lora_key(n)]
        adapter_params = [p for n, p in model.named_parameters() if is_lora_key(n)]
    else:
        local_params, adapter_params = list(model.local_model.parameters()), list(model.adapter.parameters())
    common = dict(train=cfg.train, generator=generator)
    if cfg.adapter.schedule == "iterative" and _can_reuse_frozen(ctx, model, data):
        stats = _iterative_reusing_frozen(ctx, model, local_params, adapter_params, data, common)
    elif cfg.adapter.schedule == "iterative":
        stats = [
            train_epochs(model, local_params, data.train_x, data.train_y, augment=data.augment,
                         epochs=cfg.train.local_epochs, name="local_model", **common),
            train_epochs(model, adapter_params, data.train_x, data.train_y, augment=data.augment,
                         epochs=cfg.train.adapter_epochs, name="adapter", **common),
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


# ---- exact reuse of a frozen part's outputs (iterative schedule, no augmentation)
#
# While one part is frozen its outputs depend on the (unaugmented) inputs only, so they are computed
# once per step in large no-grad batches instead of in every mini-batch's forward and backward.
# Same batches, same losses and gradients up to float summation order.


def _can_reuse_frozen(ctx: FederationContext, model: nn.Module, data: ClientData) -> bool:
    if not ctx.config.engine.reuse_frozen or data.augment is not None or _uses_lora(ctx):
        return False
    # a frozen part is a function of its input only without dropout or batch statistics
    stochastic = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.modules.batchnorm._BatchNorm)
    return not any(isinstance(m, stochastic) for m in model.modules())


def _frozen_outputs(fn, x: torch.Tensor, batch_size: int, stats: TrainStats) -> torch.Tensor:
    """``fn(x)`` without gradients, in batches; its FLOPs are added to ``stats``."""
    with torch.no_grad():
        out = torch.cat([fn(x[i : i + batch_size]) for i in range(0, int(x.shape[0]), batch_size)])
    # counted once per (structure, batch shape) and cached: a counter around every pass cost ~5% of a client
    stats.flops += flop_count.evaluation_flops(fn, x, batch_size)
    return out


def _branch_loss_adapter_cached(model: PersonalizedModel, xb: tuple[torch.Tensor, torch.Tensor], yb: torch.Tensor) -> torch.Tensor:
    inputs, adapter_out = xb
    return F.cross_entropy((1.0 - model.mu) * model.local_model(inputs) + model.mu * adapter_out, yb)


def _branch_loss_local_cached(model: PersonalizedModel, xb: tuple[torch.Tensor, torch.Tensor], yb: torch.Tensor) -> torch.Tensor:
    inputs, local_out = xb
    return F.cross_entropy((1.0 - model.mu) * local_out + model.mu * model.adapter(inputs), yb)


def _head_loss_local_cached(model: PersonalizedModel, xb: tuple[torch.Tensor, torch.Tensor], yb: torch.Tensor) -> torch.Tensor:
    representation, head_out = xb
    return F.cross_entropy(head_out + model.mu * model.adapter(representation), yb)


def _iterative_reusing_frozen(ctx: FederationContext, model: PersonalizedModel, local_params: list, adapter_params: list,
                              data: ClientData, common: dict) -> list[TrainStats]:
    cfg = ctx.config
    # the training batch size: larger no-grad batches measured slower per sample on CPU
    batch = cfg.train.batch_size
    x, y = data.train_x, data.train_y
    pre_local, pre_adapter = TrainStats(), TrainStats()
    if cfg.adapter.placement == "branch" and cfg.train.local_epochs > 0 and data.num_train:
        # step 1: the adapter is frozen and sees the raw input
        adapter_out = _frozen_outputs(model.adapter, x, batch, pre_local)
        step1 = train_epochs(model, local_params, (x, adapter_out), y, epochs=cfg.train.local_epochs,
                             loss_fn=_branch_loss_adapter_cached, name="local_model", **common)
    else:  # head placement: the frozen adapter reads the representation being trained
        step1 = train_epochs(model, local_params, x, y, epochs=cfg.train.local_epochs, name="local_model", **common)
    if cfg.train.adapter_epochs > 0 and data.num_train:
        # step 2: the local model is frozen
        if cfg.adapter.placement == "branch":
            local_out = _frozen_outputs(model.local_model, x, batch, pre_adapter)
            step2 = train_epochs(model, adapter_params, (x, local_out), y, epochs=cfg.train.adapter_epochs,
                                 loss_fn=_branch_loss_local_cached, name="adapter", **common)
        else:
            representation = _frozen_outputs(model.local_model.represent, x, batch, pre_adapter)
            head_out = _frozen_outputs(model.local_model.head, representation, batch, pre_adapter)
            step2 = train_epochs(model, adapter_params, (representation, head_out), y, epochs=cfg.train.adapter_epochs,
                                 loss_fn=_head_loss_local_cached, name="adapter", **common)
    else:
        step2 = train_epochs(model, adapter_params, x, y, epochs=cfg.train.adapter_epochs, name="adapter", **common)
    step1.flops += pre_local.flops
    step2.flops += pre_adapter.flops
    return [step1, step2]


aggregate = fedavg_aggregate  # the server state is the sample-weighted mean of the uploads


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    adapter_state = unprefixed(ADAPTER, state) or broadcast
    return _personalized(ctx, client_id, unprefixed(LOCAL, state), adapter_state)


def describe(ctx: FederationContext) -> dict:
    if _uses_lora(ctx):
        reference = _lora_workspace(ctx, adapter_reference(ctx))
        return {
            "adapter_reference": adapter_reference(ctx),
            "adapter_parameters": sum(p.numel() for n, p in reference.named_parameters() if is_lora_key(n)),
        }
    return {
        "adapter_reference": adapter_reference(ctx),
        "adapter_parameters": parameter_count(_adapter_workspace(ctx)),
    }


ALGORITHM = Algorithm(
    name="pfedlora",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    describe=describe,
)
