"""FedProx: FedAvg whose clients stay near the global model, a pfedlora algorithm plugin.

Li, T., Sahu, A. K., Zaheer, M., Sanjabi, M., Talwalkar, A., Smith, V. "Federated Optimization in
Heterogeneous Networks." MLSys 2020. arXiv:1812.06127.

Every client has the same architecture (FedProx shares the whole model). A selected client starts
from the global model ``w`` (the broadcast) and minimises its local objective plus the proximal term

    h_k(v; w) = F_k(v) + mu/2 * ||v - w||^2          (the paper's Eq. 2)

for ``train.local_epochs`` epochs, then uploads ``v``; the server averages the uploads weighted by
the clients' training sample counts (FedAvg) and broadcasts the result. ``mu = 0`` is FedAvg
exactly. Evaluation uses the global model (FedProx has no personalization). The paper also lets
clients stop early ("gamma-inexact" solutions); here every client trains its full epochs, the
setting of the paper's experiments without systems heterogeneity.

This package is the worked example of docs/write-your-own-algorithm.md: it is installed with pip
and found through the entry-point group ``pfedlora.algorithms``; the library is not changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
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
from pfedlora.algorithms.training import cross_entropy_loss, train_epochs
from pfedlora.registry import AlgorithmSettings, register


class FedProxSettings(AlgorithmSettings):
    """The config section ``fedprox``."""

    # weight of the proximal term; the paper tunes it in {0.001, 0.01, 0.1, 1}; 0 is FedAvg
    mu: float = Field(default=0.01, ge=0)


def _architecture(ctx: FederationContext) -> str:
    return ctx.client_arch(0)  # check_config made every client's the same


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    model = ctx.new_model(_architecture(ctx), seed=derive_seed(ctx.config.seed, "global_model"))
    weights = prefixed("", model.state_dict())
    return weights, dict(weights)


def init_client(ctx: FederationContext, client_id: int) -> State:
    return {}  # a client keeps nothing between rounds


def proximal_loss(global_parameters: list[torch.Tensor], mu: float):
    """Cross-entropy plus mu/2 ||v - w||^2 over the trainable parameters (their order in the model)."""

    def loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distance = sum(((p - w) ** 2).sum() for p, w in zip(module.parameters(), global_parameters))
        return F.cross_entropy(module(x), y) + mu / 2 * distance

    return loss


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    model = load_into(local_workspace(ctx, client_id), broadcast)
    mu = ctx.config.fedprox.mu
    # w is fixed during local training: a detached copy of the starting point
    anchor = [p.detach().clone() for p in model.parameters()]
    loss_fn = proximal_loss(anchor, mu) if mu > 0 else cross_entropy_loss
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment,
                         epochs=ctx.config.train.local_epochs, train=ctx.config.train, generator=generator,
                         loss_fn=loss_fn, name="global_model")
    return ClientResult(state={}, upload=prefixed("", model.state_dict()), weight=float(data.num_train), stats=[stats])


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_into(local_workspace(ctx, client_id), broadcast)


def check_config(config) -> None:
    architectures = sorted({config.client_model(k) for k in range(config.num_clients)})
    if len(architectures) > 1:
        raise ValueError(f"fedprox shares the whole model: every client needs the same architecture, got "
                         f"{', '.join(architectures)}; set e.g. model_pool=[cnn3]")


ALGORITHM = Algorithm(
    name="fedprox",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=fedavg_aggregate,
    personalized_model=personalized_model,
    # the upload has the broadcast's tensors and the aggregate is their weighted mean: DP and SecAgg+ apply
    averages_uploads=lambda config: True,
)

register(ALGORITHM, settings=FedProxSettings, check_config=check_config)
