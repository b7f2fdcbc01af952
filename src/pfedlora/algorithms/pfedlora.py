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
from pfedlora.models.adapters import PersonalizedModel, build_adapter
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
    )


def _adapter_workspace(ctx: FederationContext) -> nn.Module:
    return ctx.cached_module(("pfedlora-adapter",), lambda: _new_adapter(ctx))


def _local_workspace(ctx: FederationContext, client_id: int) -> nn.Module:
    arch = ctx.client_arch(client_id)
    return ctx.cached_module(("model", arch), lambda: ctx.new_model(arch, seed=0))


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.config.seed, "adapter"))
        adapter = _new_adapter(ctx)
    global_adapter = prefixed("", adapter.state_dict())
    return global_adapter, dict(global_adapter)


def init_client(ctx: FederationContext, client_id: int) -> State:
    model = ctx.new_model(ctx.client_arch(client_id), seed=derive_seed(ctx.config.seed, "client", client_id))
    return prefixed(LOCAL, model.state_dict())


def _personalized(ctx: FederationContext, client_id: int, local_state: State, adapter_state: State) -> PersonalizedModel:
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
    common = dict(train=cfg.train, generator=generator)
    if cfg.adapter.schedule == "iterative":
        stats = [
            train_epochs(model, model.local_model.parameters(), data.train_x, data.train_y,
                         epochs=cfg.train.local_epochs, name="local_model", **common),
            train_epochs(model, model.adapter.parameters(), data.train_x, data.train_y,
                         epochs=cfg.train.adapter_epochs, name="adapter", **common),
        ]
    else:
        stats = [train_epochs(model, model.parameters(), data.train_x, data.train_y,
                              epochs=cfg.train.local_epochs, name="local_model+adapter", **common)]
    adapter_state = prefixed("", model.adapter.state_dict())
    new_state = prefixed(LOCAL, model.local_model.state_dict()) | prefixed(ADAPTER, adapter_state)
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
