"""FedL2G: guiding vectors learned by the server so the guidance helps each client's own task.

Zhang, J., Liu, Y., Hua, Y., Cao, J., Yang, Q. "Adaptive Guidance for Local Training in
Heterogeneous Federated Learning" (FedL2G: Federated Learning-to-Guide), arXiv:2410.06490, 2024.
Rules read from the authors' code (HtFLlib ``clientl2g_feat.py`` / ``clientl2g_logit.py`` and the
matching servers). The two published variants differ only in what is guided, ``fedl2g.target``:

* ``features`` (FedL2G-f): the 500-d representation ``represent(x)``; guiding vectors ``[C, 500]``;
* ``logits`` (FedL2G-l): the model's logits; guiding vectors ``[C, C]``.

Broadcast: the guiding vectors ``G`` (one per class; the server initialises them ``N(0, 1)``, as
``nn.Embedding`` does in the authors' code) and the count of rounds aggregated so far (for the
warm-up). Uploaded: the client's gradient of its quiz loss with respect to ``G``, only the rows of
the classes in its study batch (the other rows are zero: the quiz loss reaches ``G`` only through
the study step's guiding loss), ``[H, d]``, and those classes' indices ``[H]`` (int64, ascending),
as the authors' clients send a ``{class: gradient}`` dictionary; ``H · (d · 4 + 8)`` bytes in
float32, counted and sent (on Flower the same dictionary is the message).

Client, each round:

1. local training (skipped in the first ``fedl2g.warm_up_rounds`` rounds) on its training data
   minus its quiz set, with ``CE + fedl2g.lam · MSE(f(x), G[y])`` (``f``: features or logits;
   the authors' code has weight 1).
2. meta-study with the trained model ``θ``: one differentiable SGD step on a study batch
   (``fedl2g.study_batches`` mini-batches of ``train.batch_size`` from the training data minus the
   quiz set, in a random order) ``θ' = θ − lr · ∇θ [CE + λ · MSE(f(x), G[y])]`` (``lr = train.lr``,
   plain SGD as in the authors' code), then the quiz loss ``CE(θ'; quiz set)`` and its gradient
   with respect to ``G`` through that step (second order through the model, as the authors' code
   computes it with ``higher``). The model itself is not changed by the meta-study.

The quiz set is a fixed random subset of ``fedl2g.quiz_size`` of the client's training samples
(at most all but one), held out of local training (``fedl2g.hold_out_quiz``, the authors' rule).

Server: for each class, the plain mean of the uploaded gradients over the clients whose study
batch held it (zero for classes nobody's did); the whole ``[C, d]`` gradient is clipped to L2 norm
100 and ``G ← G − fedl2g.server_lr · gradient`` (plain SGD, as in the authors' code).

Costs: the meta-study's FLOPs (forward, double backward) are measured and counted as client
training FLOPs; the server's work is a mean and one SGD step.

Deviations: the authors take the first ``batch_size`` training samples as the quiz set and their
batch size (10) as its size; here the quiz set is a seeded random subset of ``quiz_size`` samples
(default 10), so it does not grow with this project's larger batches. The authors' code marks a
class as uploaded when its gradient row is non-zero; here the study batch's class counts say which
classes were studied (the same classes unless a studied class's gradient is exactly zero). The
authors' ``warm_up_rounds`` default is 50 of 2,000 rounds; the default here is 0, since 50 would
leave a 20-round run without local training (evaluation runs in warm-up rounds too). The study batch is not
augmented. Evaluation uses each client's own model, as for every other algorithm.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

from pydantic import Field
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

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
    prefixed,
)
from pfedlora.algorithms.class_stats import held_rows, held_rows_problem
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local, representation_dim
from pfedlora.algorithms.training import cross_entropy_loss, train_epochs
from pfedlora.config import Config
from pfedlora.metrics import flops as flop_count
from pfedlora.registry import AlgorithmSettings, register


class FedL2GSettings(AlgorithmSettings):
    """FedL2G (Zhang et al., 2024)."""

    target: Literal["features", "logits"] = Field(
        default="features",
        description="What the guiding vectors guide: the 500-d representation (FedL2G-f) or the logits (FedL2G-l).")
    lam: float = Field(
        default=1.0, ge=0,
        description="Weight of the guiding loss MSE(features or logits, guiding vector of the label) (the authors' "
                    "code: 1); 0 switches federated knowledge off.")
    server_lr: float = Field(
        default=0.01, gt=0, description="Learning rate of the server's SGD step on the guiding vectors (the authors: 0.01).")
    quiz_size: int = Field(
        default=10, ge=1,
        description="Training samples each client holds out as its quiz set, at most all but one "
                    "(the authors: one batch of 10).")
    study_batches: int = Field(
        default=1, ge=1, description="Mini-batches (of train.batch_size) in the meta-study step (the authors: 1).")
    hold_out_quiz: bool = Field(
        default=True, description="Keep the quiz set out of local training (the authors' rule).")
    warm_up_rounds: int = Field(
        default=0, ge=0,
        description="First rounds with meta-study only, no local training (the authors' code: 50 of 2,000 rounds).")

GUIDANCE = "guiding_vectors"
ROUND = "round"  # rounds aggregated so far (broadcast: decides the warm-up)
GRADS = "guidance_grads"  # upload: the studied classes' rows of the meta-gradient [H, d]
CLASSES = "studied_classes"  # upload: their class indices [H], ascending
GRAD_NORM = "grad_norm"  # server state: norm of the last aggregated gradient (before clipping)
GUIDED = "guided_classes"  # server state: classes with a gradient in the last round
SERVER_CLIP = 100.0  # the authors' clip on the aggregated gradient


def _settings(ctx: FederationContext) -> FedL2GSettings:
    return ctx.config.fedl2g


def guidance_dim(ctx: FederationContext) -> int:
    return representation_dim(ctx) if _settings(ctx).target == "features" else ctx.num_classes


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    generator = torch.Generator().manual_seed(derive_seed(ctx.config.seed, "fedl2g-guiding-vectors"))
    guidance = torch.randn(ctx.num_classes, guidance_dim(ctx), generator=generator).to(ctx.device)
    state = {GUIDANCE: guidance, ROUND: torch.zeros(()), GRAD_NORM: torch.zeros(()), GUIDED: torch.zeros(())}
    return state, {GUIDANCE: guidance.clone(), ROUND: torch.zeros(())}


class _Outputs(nn.Module):
    """``(features, logits)`` of a model with ``represent`` and ``head`` (for ``functional_call``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rep = self.model.represent(x)
        return rep, self.model.head(rep)


def guided_loss(guidance: torch.Tensor, lam: float, target: str):
    """CE plus λ · MSE(features or logits, guiding vector of the label)."""

    def loss_fn(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rep = module.represent(x)
        logits = module.head(rep)
        guided = rep if target == "features" else logits
        return F.cross_entropy(logits, y) + lam * F.mse_loss(guided, guidance[y])

    return loss_fn


def quiz_rows(ctx: FederationContext, client_id: int, n: int) -> torch.Tensor:
    """The client's quiz set: a fixed seeded subset of its training rows (at most n − 1 of them)."""
    size = min(_settings(ctx).quiz_size, n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(ctx.config.seed, "fedl2g-quiz",
                                                                                    client_id)))
    return order[:max(size, 0)]


def meta_gradient(ctx: FederationContext, model: nn.Module, guidance: torch.Tensor, study_x: torch.Tensor,
                  study_y: torch.Tensor, quiz_x: torch.Tensor, quiz_y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """∂ CE(θ'; quiz) / ∂G with θ' = θ − lr · ∇θ mean over study batches of [CE + λ · MSE(f, G[y])]; and the quiz loss.

    ``study_x``/``study_y`` are split into mini-batches of ``train.batch_size``. The model is not changed.
    """
    settings, cfg = _settings(ctx), ctx.config
    wrapper = _Outputs(model)
    params = {f"model.{name}": p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    buffers = {f"model.{name}": b.detach().clone() for name, b in model.named_buffers()}
    guide = guidance.detach().clone().requires_grad_(True)
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            pseudo, batches = 0.0, 0
            for start in range(0, int(study_y.shape[0]), cfg.train.batch_size):
                xb, yb = study_x[start:start + cfg.train.batch_size], study_y[start:start + cfg.train.batch_size]
                rep, logits = functional_call(wrapper, params | buffers, (xb,))
                guided = rep if settings.target == "features" else logits
                pseudo = pseudo + F.cross_entropy(logits, yb) + settings.lam * F.mse_loss(guided, guide[yb])
                batches += 1
            pseudo = pseudo / batches
            grads = torch.autograd.grad(pseudo, list(params.values()), create_graph=True)
            stepped = {name: p - cfg.train.lr * g for (name, p), g in zip(params.items(), grads)}
            _, quiz_logits = functional_call(wrapper, stepped | buffers, (quiz_x,))
            quiz_loss = F.cross_entropy(quiz_logits, quiz_y)
            (grad,) = torch.autograd.grad(quiz_loss, guide, allow_unused=True)
    finally:
        model.train(was_training)
    if grad is None:  # λ = 0: the guidance is not in the graph
        grad = torch.zeros_like(guide)
    return grad.detach(), float(quiz_loss.detach())


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg, settings = ctx.config, _settings(ctx)
    model = load_local(ctx, client_id, state)
    guidance = broadcast[GUIDANCE]
    n = data.num_train
    quiz = quiz_rows(ctx, client_id, n)
    rest = torch.ones(n, dtype=torch.bool)
    rest[quiz] = False
    rest = rest.to(data.train_y.device)
    quiz = quiz.to(data.train_y.device)
    stats = []
    if float(broadcast[ROUND]) >= settings.warm_up_rounds:
        train_x, train_y = (data.train_x[rest], data.train_y[rest]) if settings.hold_out_quiz else (data.train_x,
                                                                                                      data.train_y)
        loss_fn = guided_loss(guidance, settings.lam, settings.target) if settings.lam > 0 else cross_entropy_loss
        stats.append(train_epochs(model, model.parameters(), train_x, train_y, augment=data.augment,
                                  epochs=cfg.train.local_epochs, train=cfg.train, generator=generator,
                                  loss_fn=loss_fn, name="local_model"))
    grads = torch.zeros(ctx.num_classes, guidance_dim(ctx), device=guidance.device)
    counts = torch.zeros(ctx.num_classes, device=guidance.device)  # no quiz set: nothing studied, nothing sent
    if quiz.numel() > 0:
        rest_rows = rest.nonzero().flatten()
        order = rest_rows[torch.randperm(int(rest_rows.shape[0]), generator=generator).to(rest_rows.device)]
        study = order[:settings.study_batches * cfg.train.batch_size]
        study_x, quiz_x = data.train_x[study], data.train_x[quiz]
        # the meta-step's FLOPs depend on the model's structure and the shapes only: count it once
        # (under the counter every operator goes through Python: 1-10% of the step, measured)
        key = ("fedl2g-meta-step", flop_count.module_signature(model), tuple(study_x.shape), tuple(quiz_x.shape),
               str(study_x.dtype), study_x.device.type, tuple(guidance.shape), settings.target, float(settings.lam),
               cfg.train.batch_size)
        flops = flop_count.cached_step_flops(key)
        with flop_count.counting() if flops is None else nullcontext() as counter:
            grads, _ = meta_gradient(ctx, model, guidance, study_x, data.train_y[study], quiz_x, data.train_y[quiz])
        if flops is None:
            flops = int(counter.get_total_flops())
            flop_count.store_step_flops(key, flops)
        counts = torch.bincount(data.train_y[study], minlength=ctx.num_classes).to(grads.device)
        stats.append(TrainStats(module="meta_study", num_samples=int(study.shape[0] + quiz.shape[0]), flops=flops))
    rows, classes = held_rows(grads.to(torch.float32), counts)
    return ClientResult(state=prefixed(LOCAL, model.state_dict()), upload={GRADS: rows, CLASSES: classes},
                        weight=float(n), stats=stats)


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    guidance = server_state[GUIDANCE]
    total = torch.zeros_like(guidance, dtype=torch.float64)
    holders = torch.zeros(guidance.shape[0], dtype=torch.float64, device=guidance.device)
    for upload in uploads:
        classes = upload.payload[CLASSES].to(guidance.device)
        # each class once per upload: the sums of the dense rows, in the same order (and counted FLOPs)
        total[classes] += upload.payload[GRADS].to(torch.float64).to(guidance.device)
        holders[classes] += 1
    gradient = (total / holders.clamp(min=1).unsqueeze(1)).to(guidance.dtype)
    norm = torch.linalg.vector_norm(gradient)
    gradient = gradient * torch.clamp(SERVER_CLIP / (norm + 1e-6), max=1.0)  # torch's clip_grad_norm_ rule
    guidance = guidance - _settings(ctx).server_lr * gradient
    round_count = server_state[ROUND] + 1
    state = {GUIDANCE: guidance, ROUND: round_count, GRAD_NORM: norm.detach().clone(),
             GUIDED: (holders > 0).sum().to(torch.float32)}
    return state, {GUIDANCE: guidance.clone(), ROUND: round_count.clone()}


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_local(ctx, client_id, state)


def upload_spec(ctx: FederationContext, broadcast: Payload) -> UploadSpec:
    c, d = ctx.num_classes, guidance_dim(ctx)
    return {
        GRADS: TensorSpec((None, d), torch.float32, max_numel=c * d),
        CLASSES: TensorSpec((None,), torch.int64, max_numel=c),
    }


def check_upload(ctx: FederationContext, broadcast: Payload, payload: Payload) -> str | None:
    """One class index per gradient row, each a class of the task, strictly ascending (no class twice)."""
    return held_rows_problem(payload[GRADS], payload[CLASSES], ctx.num_classes, GRADS, CLASSES)


def server_metrics(ctx: FederationContext, server_state: State) -> dict[str, float]:
    return {"fedl2g_grad_norm": float(server_state[GRAD_NORM]), "fedl2g_guided_classes": float(server_state[GUIDED])}


def averages_uploads(config: Config) -> bool:
    return False  # gradients with a per-class holder mask, not the broadcast's tensors: no weighted mean


ALGORITHM = Algorithm(
    name="fedl2g",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    upload_spec=upload_spec,
    check_upload=check_upload,
    server_metrics=server_metrics,
    averages_uploads=averages_uploads,
)

register(ALGORITHM, settings=FedL2GSettings)
