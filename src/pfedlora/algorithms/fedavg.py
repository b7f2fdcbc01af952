"""FedAvg: the homogeneous reference, one global model averaged over clients.

McMahan, H. B., Moore, E., Ramage, D., Hampson, S., Agüera y Arcas, B. "Communication-Efficient
Learning of Deep Networks from Decentralized Data." AISTATS 2017.

Every client has the same architecture (the config refuses a heterogeneous ``model_pool`` /
``client_models``). A selected client trains the global model on its data and uploads its
weights; the server averages them weighted by training sample counts. Evaluation uses the global
model on every client's test split (FedAvg has no personalization).
"""

from __future__ import annotations

import torch
from torch import nn

from pfedlora.algorithms.aggregation import fedavg_aggregate
from pfedlora.algorithms.base import (
    Algorithm,
    ClientData,
    ClientResult,
    FederationContext,
    Payload,
    State,
    derive_seed,
    load_into,
    prefixed,
)
from pfedlora.algorithms.local_models import local_workspace
from pfedlora.algorithms.training import train_epochs
from pfedlora.config import Config
from pfedlora.errors import UserError
from pfedlora.registry import register


def _arch(ctx: FederationContext) -> str:
    archs = {ctx.client_arch(k) for k in range(ctx.config.num_clients)}
    if len(archs) != 1:  # the config already refuses this; guard runtimes that bypass it
        raise UserError(f"fedavg needs one architecture for every client, got {', '.join(sorted(archs))}")
    return archs.pop()


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    model = ctx.new_model(_arch(ctx), seed=derive_seed(ctx.config.seed, "global_model"))
    weights = prefixed("", model.state_dict())
    return weights, dict(weights)


def init_client(ctx: FederationContext, client_id: int) -> State:
    return {}  # a client holds nothing between rounds


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    model = load_into(local_workspace(ctx, client_id), broadcast)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment,
                         epochs=ctx.config.train.local_epochs, train=ctx.config.train, generator=generator,
                         name="global_model")
    return ClientResult(state={}, upload=prefixed("", model.state_dict()), weight=float(data.num_train), stats=[stats])


aggregate = fedavg_aggregate  # the server state is the sample-weighted mean of the uploads


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_into(local_workspace(ctx, client_id), broadcast)


ALGORITHM = Algorithm(
    name="fedavg",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    # the upload is the broadcast's tensors and the aggregate their weighted mean (DP, SecAgg+)
    averages_uploads=lambda config: True,
)


def check_config(config: Config) -> None:
    archs = sorted({config.client_model(k) for k in range(config.num_clients)})
    if len(archs) > 1:
        raise ValueError(f"fedavg needs one architecture for every client, got {', '.join(archs)}; "
                         "set e.g. model_pool=[cnn5]")


register(ALGORITHM, check_config=check_config)
