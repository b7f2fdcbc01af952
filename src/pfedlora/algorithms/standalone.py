"""Standalone: every client trains its own local model on its own data; nothing is communicated.

The lower reference of the MHPFL papers (e.g. pFedLoRA, FedGH): any gain of a federated method
over it is knowledge that actually travelled between clients.
"""

from __future__ import annotations

import torch
from torch import nn

from pfedlora.algorithms.base import Algorithm, ClientData, ClientResult, FederationContext, Payload, State, Upload, prefixed
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local
from pfedlora.algorithms.training import train_epochs
from pfedlora.registry import register


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    return {}, {}


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    model = load_local(ctx, client_id, state)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment,
                         epochs=ctx.config.train.local_epochs, train=ctx.config.train, generator=generator,
                         name="local_model")
    return ClientResult(state=prefixed(LOCAL, model.state_dict()), upload={}, weight=float(data.num_train), stats=[stats])


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    return server_state, {}


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_local(ctx, client_id, state)


ALGORITHM = Algorithm(
    name="standalone",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
)

register(ALGORITHM)
