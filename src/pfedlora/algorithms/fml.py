"""FML: Federated Mutual Learning.

Shen, T., Zhang, J., Jia, X., Zhang, F., Huang, G., Zhou, P., Kuang, K., Wu, F., Wu, C.
"Federated Mutual Learning." arXiv:2006.16765, 2020.

Every client keeps its heterogeneous private ``local_model`` and a copy of one homogeneous
``shared_model`` (the "meme" model; ``fml.shared_model``, default the smallest model in the pool).
A selected client loads the global shared model and trains both at once by deep mutual learning:

    L_local  = α · CE(local)  + (1 − α) · KL(p_shared ‖ p_local)
    L_shared = β · CE(shared) + (1 − β) · KL(p_local ‖ p_shared)

each KL with the other model's prediction as a fixed target; one optimizer steps on
L_local + L_shared, which gives each model exactly its own loss's gradient. The KL is the true
KL divergence averaged over the batch (``reduction="batchmean"``); some public code uses
``reduction="mean"``, which also divides by the number of classes, so α and β tuned there weigh
the KL term (number of classes)× less than the same values here. The client uploads
the shared model; the server averages it weighted by training sample counts (FedAvg).
Evaluation uses the private model.
"""

from __future__ import annotations

from pydantic import Field
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
    derive_seed,
    load_into,
    prefixed,
)
from pfedlora.algorithms.distillation import ModelPair, distillation_kl
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local, shared_workspace
from pfedlora.algorithms.training import train_epochs
from pfedlora.models.registry import ModelName
from pfedlora.registry import AlgorithmSettings, register


class FMLSettings(AlgorithmSettings):
    """Federated Mutual Learning (Shen et al., 2020)."""

    # private model: α·CE + (1−α)·KL
    alpha: float = Field(default=0.5, ge=0, le=1,
                         description="Private model's loss: alpha CE + (1 - alpha) KL to the shared model.")
    # shared model: β·CE + (1−β)·KL
    beta: float = Field(default=0.5, ge=0, le=1,
                        description="Shared model's loss: beta CE + (1 - beta) KL to the private model.")
    # default: the smallest model in the pool
    shared_model: ModelName | None = Field(default=None,
                                     description="Architecture of the shared model; null: the smallest model in the "
                                                 "pool.")


def shared_arch(ctx: FederationContext) -> str:
    return ctx.config.fml.shared_model or ctx.smallest_model()


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    model = ctx.new_model(shared_arch(ctx), seed=derive_seed(ctx.config.seed, "shared_model"))
    weights = prefixed("", model.state_dict())
    return weights, dict(weights)


def mutual_loss(alpha: float, beta: float):
    def loss_fn(pair: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        local_logits, shared_logits = pair.local_model(x), pair.shared_model(x)
        local_loss = alpha * F.cross_entropy(local_logits, y) + (1 - alpha) * distillation_kl(local_logits, shared_logits)
        shared_loss = beta * F.cross_entropy(shared_logits, y) + (1 - beta) * distillation_kl(shared_logits, local_logits)
        return local_loss + shared_loss

    return loss_fn


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    pair = ModelPair(load_local(ctx, client_id, state), load_into(shared_workspace(ctx, shared_arch(ctx)), broadcast))
    stats = train_epochs(pair, pair.parameters(), data.train_x, data.train_y, augment=data.augment, epochs=cfg.train.local_epochs,
                         train=cfg.train, generator=generator, loss_fn=mutual_loss(cfg.fml.alpha, cfg.fml.beta),
                         name="local_model+shared_model")
    shared = prefixed("", pair.shared_model.state_dict())
    # the shared model is not kept: a client always starts from the global one
    return ClientResult(state=prefixed(LOCAL, pair.local_model.state_dict()), upload=shared, weight=float(data.num_train), stats=[stats])


aggregate = fedavg_aggregate  # the server state is the sample-weighted mean of the uploads


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_local(ctx, client_id, state)


def describe(ctx: FederationContext) -> dict:
    return {"shared_model": shared_arch(ctx), "shared_model_parameters": ctx.model_parameters(shared_arch(ctx))}


ALGORITHM = Algorithm(
    name="fml",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    describe=describe,
    # the upload is the broadcast's tensors and the aggregate their weighted mean (DP, SecAgg+)
    averages_uploads=lambda config: True,
)

# always written: every config written so far carries this section
register(ALGORITHM, settings=FMLSettings, always_written=True)
