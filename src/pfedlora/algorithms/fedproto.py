"""FedProto: federated prototype learning.

Tan, Y., Long, G., Liu, L., Zhou, T., Lu, Q., Jiang, J., Zhang, C. "FedProto: Federated Prototype
Learning across Heterogeneous Clients." AAAI 2022.

A prototype is the mean 500-d representation (``represent(x)``) of one class. A selected client
trains its local model with ``CE + fedproto.lam · ‖rep − global_proto(y)‖²`` (the squared
distance as mean squared error over the 500 dimensions, as in the authors' code; samples of
classes without a global prototype yet get no regulariser), then uploads its per-class
prototypes with its class counts. The prototypes (``fedproto.class_stats``): ``last_epoch``
(default since 2026-12-05; the authors' code collects the representations of the last local
epoch's mini-batches in its training loop) averages each sample's representation as its mini-batch's
forward pass of the last epoch computed it, with no pass after training; ``after_training`` (the
rule of every FedProto result published before 2026-12-05, whose configs name it) computes them in
one pass with the trained model: one forward pass more per round (a round about 1.3x slower).
Classes no selected client holds keep their previous global prototype.

The global prototype of a class (``fedproto.aggregation``):

* ``clients`` (default): the plain mean over the clients that hold the class, as the authors'
  code does (``proto_aggregation`` in their ``lib/utils.py``).
* ``samples``: the mean weighted by each client's sample count of the class. This is what the
  paper's Eq. (6) writes (client i's prototype weighted by |D_i,c| / N_c, N_c the class's samples
  over its holders; we read the printed formula, which also carries a 1/|N_c| factor, as this
  count-weighted mean), and the rule used here until 2026-11-30.

Deviation: evaluation uses each client's own model and classifier (``head``), not the paper's
nearest-global-prototype rule, so every baseline is evaluated the same way.
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
    Upload,
    prefixed,
)
from pfedlora.algorithms.class_stats import ClassSums, average_class_means, client_class_means
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local, representation_dim
from pfedlora.algorithms.training import train_epochs
from pfedlora.registry import AlgorithmSettings, register


class FedProtoSettings(AlgorithmSettings):
    """FedProto (Tan et al., 2022)."""

    # runs written before class_stats existed made the pass after training
    former_defaults = {"class_stats": "after_training"}

    # λ, weight of the prototype regulariser
    lam: float = Field(default=1.0, ge=0,
                       description="lambda, weight of the prototype regulariser.")
    # global prototype of a class: the plain mean over the clients holding it (the authors' code),
    # or the mean weighted by their sample counts of that class (the paper's Eq. 6; used here until 2026-11-30)
    aggregation: Literal["clients", "samples"] = Field(default="clients",
                                                       description="Global prototype of a class: plain mean over "
                                                                   "the clients holding it (clients, the authors' "
                                                                   "code) or weighted by their class counts "
                                                                   "(samples, the paper's Eq. 6).")
    class_stats: Literal["after_training", "last_epoch"] = Field(
        default="last_epoch",
        description="The uploaded prototypes: recorded during the last local epoch (last_epoch, as the authors' code "
                    "collects them in its training loop; default) or from a pass over the training data after training "
                    "(after_training, the rule of results published before 2026-12-05: one forward pass more, a round "
                    "about 1.3x slower).")


PROTOTYPES = "prototypes"
COUNTS = "class_counts"


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    state = {
        PROTOTYPES: torch.zeros(ctx.num_classes, representation_dim(ctx), device=ctx.device),
        COUNTS: torch.zeros(ctx.num_classes, device=ctx.device),
    }
    return state, dict(state)


def prototype_loss(prototypes: torch.Tensor, counts: torch.Tensor, lam: float, recorder: ClassSums | None = None):
    """CE on the model's own classifier plus λ · MSE(rep, prototype of the label) (``recorder``:
    where the last epoch's per-class representations are summed)."""

    def loss_fn(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rep = module.represent(x)
        if recorder is not None:
            recorder.record(rep, y)
        loss = F.cross_entropy(module.head(rep), y)
        known = counts[y] > 0
        if lam > 0 and bool(known.any()):
            loss = loss + lam * F.mse_loss(rep[known], prototypes[y[known]])
        return loss

    return loss_fn


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    model = load_local(ctx, client_id, state)
    # the authors' rule: each sample's representation as its last-epoch mini-batch computed it (no extra pass)
    recorder = (ClassSums(ctx.num_classes, cfg.train.local_epochs - 1)
                if cfg.fedproto.class_stats == "last_epoch" else None)
    loss_fn = prototype_loss(broadcast[PROTOTYPES], broadcast[COUNTS], cfg.fedproto.lam, recorder)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment, epochs=cfg.train.local_epochs,
                         train=cfg.train, generator=generator, loss_fn=loss_fn, name="local_model",
                         on_epoch=recorder.epoch_started if recorder is not None else None)
    model.eval()
    prototypes, counts = client_class_means(recorder, model.represent, data.train_x, data.train_y, ctx.num_classes,
                                             cfg.train.eval_batch_size, stats)
    return ClientResult(state=prefixed(LOCAL, model.state_dict()), upload={PROTOTYPES: prototypes, COUNTS: counts},
                        weight=float(data.num_train), stats=[stats])


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    by_samples = ctx.config.fedproto.aggregation == "samples"
    prototypes, counts = average_class_means(uploads, PROTOTYPES, COUNTS, by_samples=by_samples,
                                             previous=(server_state[PROTOTYPES], server_state[COUNTS]))
    state = {PROTOTYPES: prototypes, COUNTS: counts}
    return state, dict(state)


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_local(ctx, client_id, state)


ALGORITHM = Algorithm(
    name="fedproto",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
)

# always written: every config written so far carries this section
register(ALGORITHM, settings=FedProtoSettings, always_written=True)
