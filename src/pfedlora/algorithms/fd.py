"""FD: Federated Distillation, exchanging per-class mean logits instead of model weights.

Jeong, E., Oh, S., Kim, H., Park, J., Bennis, M., Kim, S.-L. "Communication-Efficient On-Device
Machine Learning: Federated Distillation and Augmentation under Non-IID Private Data."
NeurIPS Workshop on Machine Learning on the Phone and other Consumer Devices, 2018.

A selected client trains its local model with ``CE + fd.gamma · KL(global_logits[y] ‖ logits)``
(temperature ``fd.temperature``; samples of classes the federation has no global logit for yet
get no distillation term), then uploads the mean logit vector of each class it holds (computed in
one pass over its training data after training) and its class counts. The server averages each
class's logits over the clients that hold it, every such client counting once as in the paper;
classes no selected client holds keep their previous global logits. Deviation: the paper's
distillation regulariser is a cross-entropy to the global soft labels; the KL used here differs
from it by a constant (the target entropy), so the gradients are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pfedlora.algorithms.base import (
    Algorithm,
    ClientData,
    ClientResult,
    FederationContext,
    Payload,
    State,
    Upload,
    prefixed,
)
from pfedlora.algorithms.class_stats import average_class_means, class_means
from pfedlora.algorithms.distillation import distillation_kl
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local
from pfedlora.algorithms.training import train_epochs

LOGITS = "class_logits"
COUNTS = "class_counts"


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    c = ctx.num_classes
    state = {LOGITS: torch.zeros(c, c, device=ctx.device), COUNTS: torch.zeros(c, device=ctx.device)}
    return state, dict(state)


def distillation_loss(global_logits: torch.Tensor, global_counts: torch.Tensor, gamma: float, temperature: float):
    """The FD local loss: CE plus the distillation term toward the global logits of each label."""

    def loss_fn(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = module(x)
        loss = F.cross_entropy(logits, y)
        known = global_counts[y] > 0
        if gamma > 0 and bool(known.any()):
            loss = loss + gamma * distillation_kl(logits[known], global_logits[y[known]], temperature)
        return loss

    return loss_fn


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    model = load_local(ctx, client_id, state)
    loss_fn = distillation_loss(broadcast[LOGITS], broadcast[COUNTS], cfg.fd.gamma, cfg.fd.temperature)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment, epochs=cfg.train.local_epochs,
                         train=cfg.train, generator=generator, loss_fn=loss_fn, name="local_model")
    model.eval()
    logits, counts = class_means(model, data.train_x, data.train_y, ctx.num_classes, cfg.train.eval_batch_size)
    return ClientResult(state=prefixed(LOCAL, model.state_dict()), upload={LOGITS: logits, COUNTS: counts},
                        weight=float(data.num_train), stats=[stats])


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    logits, counts = average_class_means(uploads, LOGITS, COUNTS, by_samples=False,
                                         previous=(server_state[LOGITS], server_state[COUNTS]))
    state = {LOGITS: logits, COUNTS: counts}
    return state, dict(state)


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_local(ctx, client_id, state)


ALGORITHM = Algorithm(
    name="fd",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
)
