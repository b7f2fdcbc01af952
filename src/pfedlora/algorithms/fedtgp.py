"""FedTGP: trainable global prototypes learned on the server with an adaptive-margin contrastive loss.

Zhang, J., Liu, Y., Hua, Y., Cao, J. "FedTGP: Trainable Global Prototypes with Adaptive-Margin-Enhanced
Contrastive Learning for Data and Model Heterogeneity in Federated Learning." AAAI 2024.
Rules read from the authors' code (HtFLlib ``clienttgp.py`` / ``servertgp.py``).

Uploaded: each selected client's prototypes of the classes it holds and nothing else, as the
authors' clients send a ``{class: prototype}`` dictionary: the prototypes (the mean 500-d
representation ``represent(x)`` of each held class) ``[H, 500]`` and their class indices ``[H]``
(int64, ascending), H the number of classes the client holds; ``H · (500 · 4 + 8)`` bytes in
float32, counted and sent (on Flower the same dictionary is the message). The prototypes
(``fedtgp.class_stats``): ``after_training`` (default, the authors' rule: one pass over the training
data with the trained model) or ``last_epoch`` (the cheaper rule: each sample's representation as its
mini-batch's forward pass of the last local epoch computed it; training is unchanged, only the upload
differs; its measured accuracy effect is in docs/results/cifar10.md). Broadcast: the global prototypes ``[C, 500]`` and a flag
(``trained``, 0 until the server has trained them once).

Client: ``CE + fedtgp.lam · MSE(rep, global_proto(y))`` (mean squared error over the 500 dimensions,
as in the authors' code); every class has a global prototype once the server has trained them, so
every sample is regularised from the second round on; the first round is plain CE.

Server: the trainable global prototypes (TGP) are a class embedding ``[C, 500]`` followed by
``Linear(500, 500) -> ReLU -> Linear(500, 500)`` (hidden width = feature width, as in the authors'
code), kept in the server state across rounds. Each round:

1. margin. The plain mean of each class's uploaded prototypes over the clients that hold it; for
   each such class its gap is the Euclidean distance to the nearest other such class's mean; the
   margin is ``min(max gap, fedtgp.margin_threshold)`` (the threshold alone when fewer than two
   classes were uploaded).
2. training. Every uploaded (client, class) prototype ``p`` with label ``y`` is a sample:
   ``fedtgp.server_epochs`` epochs of plain SGD (``fedtgp.server_lr``, no momentum, no weight decay,
   no gradient clipping, as in the authors' code; mini-batches of ``fedtgp.server_batch_size``, by
   default the clients' batch size, as there) on ``CE(−(d + margin · onehot(y)), y)`` with
   ``d_j = ‖p − TGP(j)‖₂`` for every class ``j``.
3. broadcast ``TGP(j)`` for every class, computed after training.

The server's training FLOPs (forward and backward of every step) are counted as server computation,
like everything ``aggregate`` runs.

Deviations: the squared distance is clamped at 1e-12 before the square root (the authors' expanded
``‖p‖² − 2p·g + ‖g‖²`` can go slightly negative by rounding, and the square root's gradient is
infinite at 0; both give NaN there). Evaluation uses each client's own model and classifier
(``head``), not the authors' nearest-global-prototype rule, so every baseline is evaluated the same
way (as our FedProto).
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
    TrainStats,
    Upload,
    UploadSpec,
    derive_seed,
    load_into,
    prefixed,
    unprefixed,
)
from pfedlora.algorithms.class_stats import ClassSums, client_class_means, held_rows, held_rows_problem
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local, representation_dim
from pfedlora.algorithms.training import cross_entropy_loss, train_epochs
from pfedlora.config import Config
from pfedlora.models.cnn import REPRESENTATION_DIM
from pfedlora.registry import AlgorithmSettings, register


class FedTGPSettings(AlgorithmSettings):
    """FedTGP (Zhang et al., 2024)."""

    lam: float = Field(
        default=10.0, ge=0,
        description="λ, weight of the prototype regulariser MSE(rep, global prototype of the label) "
                    "(the authors' run script: 10); 0 switches federated knowledge off (Standalone).")
    margin_threshold: float = Field(
        default=100.0, ge=0,
        description="τ, upper bound of the adaptive margin min(max class gap, τ) (the authors: 100).")
    server_epochs: int = Field(
        default=100, ge=1, description="S, server epochs over the round's uploaded prototypes (the authors: 100).")
    server_lr: float = Field(
        default=0.01, gt=0,
        description="Learning rate of the server's plain SGD on the trainable global prototypes "
                    "(the authors: the clients' lr, 0.01).")
    server_batch_size: int | None = Field(
        default=None, ge=1,
        description="Uploaded prototypes per server step; default: the clients' train.batch_size (the authors' code).")
    class_stats: Literal["after_training", "last_epoch"] = Field(
        default="after_training",
        description="The uploaded prototypes: from a pass over the training data after training (after_training, "
                    "the authors' rule; default) or recorded during the last local epoch (last_epoch: no extra "
                    "pass; the upload differs, training does not).")

PROTOTYPES = "prototypes"  # broadcast: the global prototypes [C, 500]
HELD_PROTOTYPES = "held_prototypes"  # upload: the prototypes of the classes the client holds [H, 500]
HELD_CLASSES = "held_classes"  # upload: their class indices [H], ascending
TRAINED = "trained"  # broadcast flag: 1 once the server has trained the global prototypes
TGP = "tgp."  # server state: the TGP module's parameters
ROUND = "round"  # server state: rounds aggregated so far (seeds the server's batch order)
MARGIN = "margin"  # server state: the margin of the last server training
SERVER_LOSS = "server_loss"  # server state: mean loss of the last server training


class TrainableGlobalPrototypes(nn.Module):
    """Class embedding -> Linear -> ReLU -> Linear: one global prototype per class."""

    def __init__(self, num_classes: int, dim: int = REPRESENTATION_DIM, hidden: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes, dim)
        hidden = dim if hidden is None else hidden  # the authors' hidden width = feature width
        self.middle = nn.Linear(dim, hidden)
        self.fc = nn.Linear(hidden, dim)

    def forward(self, classes: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.middle(self.embedding(classes))))

    def all_prototypes(self) -> torch.Tensor:
        return self(torch.arange(self.num_classes, device=self.embedding.weight.device))


def _tgp_workspace(ctx: FederationContext) -> TrainableGlobalPrototypes:
    return ctx.cached_module(("fedtgp-tgp",), lambda: TrainableGlobalPrototypes(ctx.num_classes, representation_dim(ctx)))


def _settings(ctx: FederationContext) -> FedTGPSettings:
    return ctx.config.fedtgp


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.config.seed, "fedtgp-tgp"))
        tgp = TrainableGlobalPrototypes(ctx.num_classes, representation_dim(ctx)).to(ctx.device)
    state = prefixed(TGP, tgp.state_dict()) | {
        ROUND: torch.zeros(()), MARGIN: torch.zeros(()), SERVER_LOSS: torch.zeros(()),
    }
    broadcast = {PROTOTYPES: torch.zeros(ctx.num_classes, representation_dim(ctx), device=ctx.device),
                 TRAINED: torch.zeros(())}
    return state, broadcast


def prototype_loss(prototypes: torch.Tensor | None, lam: float, recorder: ClassSums | None = None):
    """CE on the model's own classifier plus λ · MSE(rep, global prototype of the label) (plain CE
    when ``prototypes`` is None), the representation recorded per class when ``recorder`` is given."""

    def loss_fn(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rep = module.represent(x)
        if recorder is not None:
            recorder.record(rep, y)
        loss = F.cross_entropy(module.head(rep), y)
        return loss if prototypes is None else loss + lam * F.mse_loss(rep, prototypes[y])

    return loss_fn


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    lam = _settings(ctx).lam
    model = load_local(ctx, client_id, state)
    regularised = lam > 0 and float(broadcast[TRAINED]) > 0
    recorder = (ClassSums(ctx.num_classes, cfg.train.local_epochs - 1)
                if _settings(ctx).class_stats == "last_epoch" else None)
    if regularised or recorder is not None:
        loss_fn = prototype_loss(broadcast[PROTOTYPES] if regularised else None, lam, recorder)
    else:
        loss_fn = cross_entropy_loss
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment,
                         epochs=cfg.train.local_epochs, train=cfg.train, generator=generator, loss_fn=loss_fn,
                         name="local_model", on_epoch=recorder.epoch_started if recorder is not None else None)
    model.eval()
    prototypes, counts = client_class_means(recorder, model.represent, data.train_x, data.train_y, ctx.num_classes,
                                            cfg.train.eval_batch_size, stats)
    rows, classes = held_rows(prototypes, counts)
    return ClientResult(state=prefixed(LOCAL, model.state_dict()),
                        upload={HELD_PROTOTYPES: rows, HELD_CLASSES: classes}, weight=float(data.num_train),
                        stats=[stats])


def adaptive_margin(uploads: list[Upload], threshold: float, num_classes: int) -> torch.Tensor:
    """``min(max over uploaded classes of the distance to the nearest other uploaded class, threshold)``,
    class centres being the plain mean over the clients holding the class; the threshold alone with
    fewer than two uploaded classes."""
    totals, holders = None, None
    for upload in uploads:
        rows, classes = upload.payload[HELD_PROTOTYPES].to(torch.float64), upload.payload[HELD_CLASSES]
        if totals is None:
            totals = torch.zeros(num_classes, rows.shape[1], dtype=torch.float64, device=rows.device)
            holders = torch.zeros(num_classes, dtype=torch.float64, device=rows.device)
        classes = classes.to(rows.device)
        # each class once per upload: the sums of the dense rows, in the same order (and counted FLOPs)
        totals[classes] += rows
        holders[classes] += 1
    if totals is None or int((holders > 0).sum()) < 2:
        return torch.tensor(float(threshold))
    centres = totals[holders > 0] / holders[holders > 0].unsqueeze(1)
    distances = torch.cdist(centres, centres)
    distances.fill_diagonal_(float("inf"))
    gaps = distances.min(dim=1).values
    return torch.clamp(gaps.max(), max=threshold).to(torch.float32)


def margin_contrastive_loss(margin: float):
    """``CE(−(‖p − TGP(j)‖₂ + margin · [j = y])_j, y)`` over a mini-batch of prototypes ``p``."""

    def loss_fn(module: nn.Module, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        generated = module.all_prototypes()
        squared = (p.pow(2).sum(1, keepdim=True) - 2 * p @ generated.T + generated.pow(2).sum(1).unsqueeze(0))
        distance = squared.clamp_min(1e-12).sqrt()
        distance = distance + margin * F.one_hot(y, generated.shape[0]).to(distance.dtype)
        return F.cross_entropy(-distance, y)

    return loss_fn


def train_global_prototypes(ctx: FederationContext, tgp: TrainableGlobalPrototypes, prototypes: torch.Tensor,
                            labels: torch.Tensor, margin: float, generator: torch.Generator) -> TrainStats:
    """``server_epochs`` epochs of plain SGD on the adaptive-margin contrastive loss."""
    cfg, settings = ctx.config, _settings(ctx)
    server_train = cfg.train.model_copy(update={
        "optimizer": "sgd", "lr": settings.server_lr, "momentum": 0.0, "weight_decay": 0.0, "warmup_steps": 0,
        "clip_norm": float("inf"), "precision": "fp32",
        "batch_size": settings.server_batch_size or cfg.train.batch_size,
    })
    return train_epochs(tgp, tgp.parameters(), prototypes, labels, epochs=settings.server_epochs, train=server_train,
                        generator=generator, loss_fn=margin_contrastive_loss(margin), name="global_prototypes")


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    settings = _settings(ctx)
    round_index = int(server_state[ROUND]) + 1
    prototypes = [upload.payload[HELD_PROTOTYPES] for upload in uploads]
    labels = [upload.payload[HELD_CLASSES] for upload in uploads]
    tgp = load_into(_tgp_workspace(ctx), unprefixed(TGP, server_state))
    margin = adaptive_margin(uploads, settings.margin_threshold, ctx.num_classes)
    loss = server_state[SERVER_LOSS]
    if prototypes and sum(int(p.shape[0]) for p in prototypes):
        generator = torch.Generator().manual_seed(derive_seed(ctx.config.seed, "fedtgp-server", round_index))
        stats = train_global_prototypes(ctx, tgp, torch.cat(prototypes).to(ctx.device),
                                        torch.cat(labels).to(ctx.device), float(margin), generator)
        loss = torch.tensor(stats.mean_loss)
    tgp.eval()
    with torch.no_grad():
        global_prototypes = tgp.all_prototypes().detach().clone()
    state = prefixed(TGP, tgp.state_dict()) | {
        ROUND: torch.tensor(float(round_index)), MARGIN: margin.detach().clone().float(), SERVER_LOSS: loss,
    }
    return state, {PROTOTYPES: global_prototypes, TRAINED: torch.ones(())}


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_local(ctx, client_id, state)


def upload_spec(ctx: FederationContext, broadcast: Payload) -> UploadSpec:
    c = ctx.num_classes
    return {
        HELD_PROTOTYPES: TensorSpec((None, representation_dim(ctx)), torch.float32, max_numel=c * representation_dim(ctx)),
        HELD_CLASSES: TensorSpec((None,), torch.int64, max_numel=c),
    }


def check_upload(ctx: FederationContext, broadcast: Payload, payload: Payload) -> str | None:
    """One class index per prototype, each a class of the task, strictly ascending (no class twice)."""
    return held_rows_problem(payload[HELD_PROTOTYPES], payload[HELD_CLASSES], ctx.num_classes,
                             HELD_PROTOTYPES, HELD_CLASSES)


def server_metrics(ctx: FederationContext, server_state: State) -> dict[str, float]:
    return {"fedtgp_margin": float(server_state[MARGIN]), "fedtgp_server_loss": float(server_state[SERVER_LOSS])}


def describe(ctx: FederationContext) -> dict:
    tgp = _tgp_workspace(ctx)
    return {"tgp_parameters": sum(p.numel() for p in tgp.parameters())}


def averages_uploads(config: Config) -> bool:
    return False  # prototypes with class counts, turned into a training set on the server: no weighted mean


ALGORITHM = Algorithm(
    name="fedtgp",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    upload_spec=upload_spec,
    check_upload=check_upload,
    server_metrics=server_metrics,
    describe=describe,
    averages_uploads=averages_uploads,
)

register(ALGORITHM, settings=FedTGPSettings)
