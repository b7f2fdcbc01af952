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
from torch import nn

from pfedlora.algorithms.aggregation import weighted_mean
from pfedlora.algorithms.base import (
    Algorithm,
    ClientData,
    ClientResult,
    FederationContext,
    Payload,
    State,
    Upload,
    derive_seed,
    load_into,
    prefixed,
    unprefixed,
)
from pfedlora.algorithms.training import train_epochs
from pfedlora.models.adapters import PersonalizedModel, build_adapter, inject_lora, is_lora_key, lora_depth
from pfedlora.models.registry import parameter_count

LOCAL = "local_model."
ADAPTER = "adapter."


def adapter_reference(ctx: FederationContext) -> str:
    return ctx.config.adapter.reference or ctx.smallest_model()


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
    if cfg.adapter.schedule == "iterative":
        stats = [
            train_epochs(model, local_params, data.train_x, data.train_y,
                         epochs=cfg.train.local_epochs, name="local_model", **common),
            train_epochs(model, adapter_params, data.train_x, data.train_y,
                         epochs=cfg.train.adapter_epochs, name="adapter", **common),
        ]
    else:
        stats = [train_epochs(model, model.parameters(), data.train_x, data.train_y,
                              epochs=cfg.train.local_epochs, name="local_model+adapter", **common)]
    if _uses_lora(ctx):
        local_state, adapter_state = (prefixed("", part) for part in _split_lora(model.state_dict()))
    else:
        local_state, adapter_state = prefixed("", model.local_model.state_dict()), prefixed("", model.adapter.state_dict())
    new_state = prefixed(LOCAL, local_state) | prefixed(ADAPTER, adapter_state)
    return ClientResult(state=new_state, upload=adapter_state, weight=float(data.num_train), stats=stats)


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    if not uploads:
        return server_state, dict(server_state)
    global_adapter = weighted_mean(uploads, like=server_state)
    return global_adapter, dict(global_adapter)


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
