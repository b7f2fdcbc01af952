"""FD: Federated Distillation, exchanging per-class mean logits instead of model weights.

Jeong, E., Oh, S., Kim, H., Park, J., Bennis, M., Kim, S.-L. "Communication-Efficient On-Device
Machine Learning: Federated Distillation and Augmentation under Non-IID Private Data."
NeurIPS Workshop on Machine Learning on the Phone and other Consumer Devices, 2018.

A selected client trains its local model with ``CE + fd.gamma · KL(target[y] ‖ logits)``
(temperature ``fd.temperature``), then uploads the mean logit vector of each class it holds
(``fd.class_stats``, below) and its class counts. The server
averages each class's logits over the clients that hold it, every such client counting once;
classes no selected client holds keep their previous average.

The target (``fd.target``):

* ``leave_one_out`` (default, the paper's Algorithm 1): client i's target for class c is the
  mean of the *other* holders' logits, (F̂_c − F_c⁽ⁱ⁾)/(M_c − 1), so a client never distils
  towards its own output. The broadcast stays per class: the average, and for each class which
  clients are in it (a ``[classes, clients]`` 0/1 mask, 1 byte each) and the aggregation that
  formed it; each client keeps its own last upload and subtracts it. A class whose only holder
  is the client itself gives no target. If a client's latest upload was left out of the average
  while an older one of it is still in it (a rejected upload of a class's only other holder),
  the client cannot subtract exactly and uses the plain average for that class.
* ``include_own``: the plain average over all holders, the client's own logits included (the
  rule used here until 2026-11-30). With 2 classes per client a class has about 2 holders, so
  about half of each target is then the client's own output.

Samples whose class has no target get no distillation term. The uploaded per-class logits
(``fd.class_stats``): ``last_epoch`` (default since 2026-12-05; the paper's Algorithm 1, which
accumulates them during local training) sums each sample's logits as its mini-batch's forward pass
of the last local epoch computed them, so no pass over the data follows training;
``after_training`` (the rule of every FD result published before 2026-12-05, whose configs name
it) computes them in one pass with the trained model: one forward pass more per round, about a
third of a training epoch's work (a round 1.3x slower, ``benchmarks/README.md``). Deviation: the paper's regulariser is a cross-entropy to the global soft labels; the KL used
here differs from it by a constant (the target entropy), so the gradients are the same.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
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
    TensorSpec,
    Upload,
    UploadSpec,
    prefixed,
)
from pfedlora.algorithms.class_stats import ClassSums, average_class_means, client_class_means
from pfedlora.algorithms.distillation import distillation_kl
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local
from pfedlora.algorithms.training import train_epochs
from pfedlora.registry import AlgorithmSettings, register


class FDSettings(AlgorithmSettings):
    """Federated Distillation (Jeong et al., 2018)."""

    # runs written before class_stats existed made the pass after training
    former_defaults = {"class_stats": "after_training"}

    # weight of the distillation term (the paper gives none)
    gamma: float = Field(default=1.0, ge=0,
                         description="Weight of the distillation term (the paper gives none).")
    temperature: float = Field(default=1.0, gt=0, description="Temperature of the distillation.")
    # a client's target for class c: the mean logits of the OTHER clients holding c (the paper's
    # Algorithm 1), or of all holders, its own included (the rule used here until 2026-11-30)
    target: Literal["leave_one_out", "include_own"] = Field(default="leave_one_out",
                                                            description="A client's target for a class: the other "
                                                                        "holders' mean logits (leave_one_out, the "
                                                                        "paper's Algorithm 1) or all holders' "
                                                                        "(include_own, the rule before 2026-11-30).")
    class_stats: Literal["after_training", "last_epoch"] = Field(
        default="last_epoch",
        description="The uploaded per-class logits: recorded during the last local epoch (last_epoch, the paper's "
                    "Algorithm 1; default) or from a pass over the training data after training (after_training, the "
                    "rule of results published before 2026-12-05: one forward pass more, a round about 1.3x slower).")


LOGITS = "class_logits"  # [classes, classes]: per-class mean logits (upload: the client's own)
COUNTS = "class_counts"  # [classes]: samples behind each row
HOLDERS = "class_holders"  # broadcast [classes, clients] uint8: whose logits are in each class's average
FORMED = "class_formed"  # broadcast [classes] int32: the aggregation that formed each class's average (0: none)
ROUND = "round"  # broadcast int32: aggregations so far
OWN_LOGITS = "own.class_logits"  # client state: its last upload ...
OWN_ROUND = "own.round"  # ... and the aggregation it was sent for


init_client = init_local_state  # a private local model; its own last upload is added once it has one


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    c, n = ctx.num_classes, ctx.config.num_clients
    state = {
        LOGITS: torch.zeros(c, c, device=ctx.device),
        COUNTS: torch.zeros(c, device=ctx.device),
        HOLDERS: torch.zeros(c, n, dtype=torch.uint8, device=ctx.device),
        FORMED: torch.zeros(c, dtype=torch.int32, device=ctx.device),
        ROUND: torch.zeros((), dtype=torch.int32, device=ctx.device),
    }
    return state, dict(state)


def distillation_targets(broadcast: Payload, client_id: int, state: State, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [classes, classes], has_target [classes] bool) for client ``client_id``."""
    average = broadcast[LOGITS].to(torch.float64)
    holders = broadcast[HOLDERS].to(torch.float64)
    count = holders.sum(1)
    has_target = count > 0
    if rule == "include_own" or OWN_LOGITS not in state:
        return average.to(torch.float32), has_target
    own_round = int(state[OWN_ROUND])
    mine = (holders[:, client_id] > 0) & (broadcast[FORMED] == own_round)
    others = (count - 1).clamp(min=1).unsqueeze(1)
    without_me = (average * count.unsqueeze(1) - state[OWN_LOGITS].to(torch.float64)) / others
    targets = torch.where(mine.unsqueeze(1), without_me, average)
    return targets.to(torch.float32), has_target & ~(mine & (count <= 1))


def distillation_loss(targets: torch.Tensor, has_target: torch.Tensor, gamma: float, temperature: float,
                      recorder: ClassSums | None = None):
    """The FD local loss: CE plus the distillation term toward each label's target logits
    (``recorder``: where the per-class logits of the last epoch are summed)."""

    def loss_fn(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = module(x)
        if recorder is not None:
            recorder.record(logits, y)
        loss = F.cross_entropy(logits, y)
        known = has_target[y]
        if gamma > 0 and bool(known.any()):
            loss = loss + gamma * distillation_kl(logits[known], targets[y[known]], temperature)
        return loss

    return loss_fn


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    model = load_local(ctx, client_id, state)
    targets, has_target = distillation_targets(broadcast, client_id, state, cfg.fd.target)
    # the paper's rule: each sample's logits as its last-epoch mini-batch computed them (no extra pass)
    recorder = ClassSums(ctx.num_classes, cfg.train.local_epochs - 1) if cfg.fd.class_stats == "last_epoch" else None
    loss_fn = distillation_loss(targets, has_target, cfg.fd.gamma, cfg.fd.temperature, recorder)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment, epochs=cfg.train.local_epochs,
                         train=cfg.train, generator=generator, loss_fn=loss_fn, name="local_model",
                         on_epoch=recorder.epoch_started if recorder is not None else None)
    model.eval()
    logits, counts = client_class_means(recorder, model, data.train_x, data.train_y, ctx.num_classes,
                                         cfg.train.eval_batch_size, stats)
    # remembered so the next round's target can leave this client's own logits out
    own = {OWN_LOGITS: logits.clone(), OWN_ROUND: (broadcast[ROUND] + 1).to(torch.int32)}
    return ClientResult(state=prefixed(LOCAL, model.state_dict()) | own, upload={LOGITS: logits, COUNTS: counts},
                        weight=float(data.num_train), stats=[stats])


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    round_index = server_state[ROUND] + 1
    logits, counts = average_class_means(uploads, LOGITS, COUNTS, by_samples=False,
                                         previous=(server_state[LOGITS], server_state[COUNTS]))
    holders, formed = server_state[HOLDERS].clone(), server_state[FORMED].clone()
    fresh = torch.zeros_like(holders)
    for upload in uploads:
        fresh[upload.payload[COUNTS] > 0, upload.client_id] = 1
    updated = fresh.bool().any(1)  # classes some upload holds get a new average; the others keep theirs
    holders[updated], formed[updated] = fresh[updated], round_index.to(torch.int32)
    state = {LOGITS: logits, COUNTS: counts, HOLDERS: holders, FORMED: formed, ROUND: round_index.to(torch.int32)}
    return state, dict(state)


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_local(ctx, client_id, state)


def upload_spec(ctx: FederationContext, broadcast: Payload) -> UploadSpec:
    c = ctx.num_classes
    return {LOGITS: TensorSpec((c, c), torch.float32), COUNTS: TensorSpec((c,), torch.float32)}


ALGORITHM = Algorithm(
    name="fd",
    upload_spec=upload_spec,
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
)

# always written: every config written so far carries this section
register(ALGORITHM, settings=FDSettings, always_written=True)
