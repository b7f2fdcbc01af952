"""FedGen: data-free knowledge distillation through a server-trained generator of representations.

Zhu, Z., Hong, J., Zhou, J. "Data-Free Knowledge Distillation for Heterogeneous Federated
Learning." ICML 2021 (arXiv:2105.10056); the authors' code: github.com/zhuangdizhu/FedGen.

Every client keeps its own heterogeneous local model (extractor and header; all headers read the
same D-dimensional representation, 500 here). A selected client trains its whole model on

    L_k = CE(f_k(x), y) + α · CE(h_k(z), ŷ),   ŷ ~ p̂(y),  z = G(ε, ŷ),  ε ~ N(0, I)

one generated batch (as many rows as the real one) per step, G frozen (evaluation mode) and
α = ``fedgen.generative_weight``: the generated representations regularise the header h_k only.
It uploads its header (weight, bias) and its label counts n_k (one count per class). Before the
first generator training (round 1) the term is off, as in the authors' code. With the default
``header: global`` a client first loads the global header (see below).

The server learns the generator G (noise ⊕ one-hot label -> Linear -> BatchNorm -> ReLU ->
Linear -> D; ``noise_dim``, ``hidden_dim``) from the round's uploads alone (no data): with
p̂(y) ∝ Σ_k n_{k,y} and a_{k,y} = n_{k,y} / Σ_j n_{j,y} (each header trusted for the classes its
client holds), ``server_steps`` Adam steps (``generator_lr``, batches of ``server_batch_size``) on

    J(G) = E_{y~p̂, ε} [ Σ_k a_{k,y} · CE(h_k(G(ε, y)), y) ] + η · exp(−mean_ij ‖ε_i−ε_j‖²/d_ε · ‖z_i−z_j‖₁/D)

(the teacher loss weighted per label as in the authors' code, and their diversity loss with
η = ``diversity_weight``). It broadcasts G (its weights and BatchNorm statistics) and p̂ (as the
summed counts ``label_prior``). Server cost per round: ``server_steps`` forward+backward passes of
G and of the K uploaded headers on a batch; these are counted as server FLOPs (the simulator
measures ``aggregate``).

``fedgen.header`` says what else the server shares:

* ``global`` (default; the paper's method as far as heterogeneous models allow): the server also
  averages the uploaded headers (weighted by training sample counts) and broadcasts the mean, which
  every client loads before training and evaluates with. The paper trains the generator *and*
  averages the model (the authors' code: a sample-weighted mean of every parameter, the models
  being homogeneous there); with heterogeneous extractors only the predictor they all share can be
  averaged, which is what HtFLlib's heterogeneous FedGen does (it averages the heads and loads the
  mean into every client). With α = 0 this is LG-FedAvg evaluated with the global header (bit for
  bit, tested): the generator is then the only difference.
* ``local`` (the default before 2026-12-07, and the variant of the FedGen results published
  before then, whose configs name it): every client keeps its own header and nothing is averaged,
  so the generator is the only channel between clients. With α = 0 a client trains exactly as in
  Standalone (bit for bit, tested).

The server trains a generator from the uploads rather than only averaging them: not eligible for
client-level DP or SecAgg+.

Choices and differences from the references:

* ε ~ N(0, I): the authors' code (and HtFLlib's copy) draws ``torch.rand`` (uniform on [0, 1))
  under a comment saying "sampling from Gaussian"; this follows the comment.
* Labels are drawn in proportion to the round's label counts (the paper's label prior p̂(y));
  the authors' code draws uniformly among the labels some selected client holds more than once.
* The client objective is the paper's (the local loss plus one generated-sample CE, weight α = 1,
  as in HtFLlib). The authors' code adds a KL term between real and generated predictions and
  decays α (from 10) and that term's weight by 0.98 per round; neither is implemented.
* A fresh Adam optimizer per round (the library's one training loop; HtFLlib does the same,
  lr 0.005, 100 steps, the defaults here); the authors' code keeps Adam's state across rounds with
  lr 3e-4, weight decay 1e-2, 50 steps per round and an exponential lr decay.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field
import torch
import torch.nn.functional as F
from torch import nn

from pfedlora.algorithms.aggregation import WeightedMean
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
    derive_seed,
    load_into,
    prefixed,
    unprefixed,
)
from pfedlora.algorithms.local_models import LOCAL, head_state, init_local_state, load_local, refuse_mixed_heads
from pfedlora.algorithms.training import cross_entropy_loss, train_epochs
from pfedlora.errors import UserError
from pfedlora.registry import AlgorithmSettings, register


class FedGenSettings(AlgorithmSettings):
    """FedGen (Zhu et al., ICML 2021)."""

    generative_weight: float = Field(
        default=1.0, ge=0,
        description="α: weight of the generated-representation cross-entropy on the client's header; 0 switches "
                    "transfer off.")
    noise_dim: int = Field(default=64, ge=1, le=4096, description="Generator noise dimension (the authors' CIFAR generator: 64).")
    hidden_dim: int = Field(default=512, ge=1, le=8192,
                            description="Generator hidden width (the authors' CIFAR generator and HtFLlib: 512).")
    generator_lr: float = Field(default=0.005, gt=0, description="Server Adam learning rate, fresh each round (HtFLlib).")
    server_steps: int = Field(default=100, ge=1, description="Generator training steps per round (HtFLlib: 100).")
    server_batch_size: int = Field(default=32, ge=2,
                                   description="Generated rows per server step (BatchNorm needs at least 2).")
    diversity_weight: float = Field(default=1.0, ge=0,
                                    description="η, weight of the generator's diversity loss (the authors' code: 1).")
    header: Literal["local", "global"] = Field(
        default="global",
        description="global (default; the paper's shared predictor, as HtFLlib): the uploaded headers are also "
                    "averaged and loaded into every client, which evaluates with them; local (the default before "
                    "2026-12-07): each client keeps its header and the generator is the only channel.")

    # configs written before 2026-12-07 without the key meant the then default
    former_defaults: ClassVar[dict[str, Any]] = {"header": "local"}


GENERATOR = "generator."
PRIOR = "label_prior"  # broadcast: the round's summed label counts (p̂ up to scale; zero: no generator yet)
HEAD = "head."
COUNTS = "label_counts"  # upload: the client's training samples per class
ROUND = "round"  # server state: rounds aggregated so far (seeds the server's sampling)
LOSS = "generator_loss"  # server state: the last round's mean generator loss


class Generator(nn.Module):
    """G(ε, y): noise ⊕ one-hot label -> Linear -> BatchNorm -> ReLU -> Linear -> representation."""

    def __init__(self, noise_dim: int, num_classes: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(noise_dim + num_classes, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, self.num_classes).to(noise.dtype)
        return self.out(torch.relu(self.bn(self.fc(torch.cat((noise, onehot), dim=1)))))


def representation_dim(ctx: FederationContext) -> int:
    """The one representation dimension every client's header reads (the generator's output)."""
    archs = sorted({ctx.client_arch(k) for k in range(ctx.config.num_clients)})
    dims = {arch: int(ctx.cached_module(("model", arch), lambda a=arch: ctx.new_model(a, seed=0)).representation_dim)
            for arch in archs}
    if len(set(dims.values())) != 1:
        raise UserError(f"FedGen needs one representation dimension for every client's header; the pool has {dims}")
    return next(iter(dims.values()))


def _new_generator(ctx: FederationContext, seed: int) -> Generator:
    cfg = ctx.config.fedgen
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(cfg.noise_dim, ctx.num_classes, cfg.hidden_dim, representation_dim(ctx))
    return generator.to(ctx.device)


def _generator_workspace(ctx: FederationContext) -> Generator:
    return ctx.cached_module(("fedgen-generator",), lambda: _new_generator(ctx, seed=0))


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    generator = prefixed(GENERATOR, _new_generator(ctx, derive_seed(ctx.config.seed, "fedgen-generator")).state_dict())
    broadcast = generator | {PRIOR: torch.zeros(ctx.num_classes)}
    if ctx.config.fedgen.header == "global":
        model = ctx.new_model(ctx.smallest_model(), seed=derive_seed(ctx.config.seed, "global_header"))
        broadcast |= prefixed(HEAD, head_state(model))
    return broadcast | {ROUND: torch.zeros(()), LOSS: torch.zeros(())}, broadcast


def generated_header_loss(generator: Generator, prior: torch.Tensor, weight: float, sampler: torch.Generator,
                          noise_dim: int):
    """The client loss: CE on the batch plus ``weight`` x CE of the header on generated representations."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = int(y.shape[0])
        labels = torch.multinomial(prior, n, replacement=True, generator=sampler).to(y.device)
        noise = torch.randn(n, noise_dim, generator=sampler).to(x.device)
        with torch.no_grad():
            z = generator(noise, labels)
        return F.cross_entropy(model(x), y) + weight * F.cross_entropy(model.head(z), labels)

    return loss_fn


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    model = load_local(ctx, client_id, state)
    if cfg.fedgen.header == "global":
        model.head.load_state_dict(unprefixed(HEAD, broadcast))
    prior = broadcast[PRIOR].to(torch.float64).cpu()
    loss_fn = cross_entropy_loss
    if cfg.fedgen.generative_weight > 0 and float(prior.sum()) > 0:
        gen = load_into(_generator_workspace(ctx), unprefixed(GENERATOR, broadcast)).eval()
        sampler = torch.Generator().manual_seed(derive_seed(generator.initial_seed(), "fedgen-samples"))
        loss_fn = generated_header_loss(gen, prior, cfg.fedgen.generative_weight, sampler, cfg.fedgen.noise_dim)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment,
                         epochs=cfg.train.local_epochs, train=cfg.train, generator=generator, loss_fn=loss_fn,
                         name="local_model")
    counts = torch.bincount(data.train_y.cpu(), minlength=ctx.num_classes).to(torch.float32)
    upload = prefixed(HEAD, head_state(model)) | {COUNTS: counts}
    return ClientResult(state=prefixed(LOCAL, model.state_dict()), upload=upload, weight=float(data.num_train),
                        stats=[stats])


class _Ensemble(nn.Module):
    """The generator and the round's uploaded headers (frozen), for the server's training loop."""

    def __init__(self, generator: Generator, weights: torch.Tensor, biases: torch.Tensor,
                 label_weights: torch.Tensor, diversity_weight: float) -> None:
        super().__init__()
        self.generator = generator
        self.register_buffer("weights", weights)  # K x C x D
        self.register_buffer("biases", biases)  # K x C
        self.register_buffer("label_weights", label_weights)  # C x K: a_{k,y}
        self.diversity_weight = diversity_weight


def generator_loss(ensemble: _Ensemble, inputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    noise, _ = inputs
    z = ensemble.generator(noise, labels)
    logits = torch.einsum("nd,kcd->knc", z, ensemble.weights) + ensemble.biases.unsqueeze(1)  # K x N x C
    per_client = torch.stack([F.cross_entropy(client_logits, labels, reduction="none") for client_logits in logits])
    teacher = (per_client * ensemble.label_weights[labels].T).sum(0).mean()
    if ensemble.diversity_weight == 0:
        return teacher
    noise_dist = torch.cdist(noise, noise).pow(2) / noise.shape[1]
    output_dist = torch.cdist(z, z, p=1) / z.shape[1]
    return teacher + ensemble.diversity_weight * torch.exp(-(noise_dist * output_dist).mean())


def train_generator(ctx: FederationContext, generator_state: State, uploads: list[Upload],
                    sampler: torch.Generator) -> tuple[State, float]:
    """``server_steps`` Adam steps of the generator against the uploaded headers; (new state, mean loss)."""
    cfg = ctx.config
    counts = torch.stack([u.payload[COUNTS] for u in uploads]).to(torch.float64)  # K x C
    totals = counts.sum(0)
    label_weights = (counts / totals.clamp(min=1)).T.to(torch.float32)  # C x K
    ensemble = _Ensemble(load_into(_generator_workspace(ctx), generator_state),
                         torch.stack([u.payload[f"{HEAD}weight"] for u in uploads]),
                         torch.stack([u.payload[f"{HEAD}bias"] for u in uploads]),
                         label_weights, cfg.fedgen.diversity_weight).to(ctx.device)
    rows = cfg.fedgen.server_steps * cfg.fedgen.server_batch_size
    labels = torch.multinomial(totals, rows, replacement=True, generator=sampler).to(ctx.device)
    noise = torch.randn(rows, cfg.fedgen.noise_dim, generator=sampler).to(ctx.device)
    server_train = cfg.train.model_copy(update={"optimizer": "adamw", "lr": cfg.fedgen.generator_lr, "weight_decay": 0.0,
                                                "batch_size": cfg.fedgen.server_batch_size, "warmup_steps": 0})
    # one epoch over server_steps batches; the batch order comes from the same seeded sampler
    stats = train_epochs(ensemble, ensemble.generator.parameters(), (noise, labels), labels, epochs=1,
                         train=server_train, generator=sampler, loss_fn=generator_loss, name="generator")
    return prefixed("", ensemble.generator.state_dict()), stats.mean_loss


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    round_index = int(server_state[ROUND]) + 1
    broadcast = {name: t for name, t in server_state.items() if name not in (ROUND, LOSS)}
    loss = server_state[LOSS]
    uploads = [u for u in uploads if u.weight > 0 and float(u.payload[COUNTS].sum()) > 0]
    if uploads:
        sampler = torch.Generator().manual_seed(derive_seed(ctx.config.seed, "fedgen-server", round_index))
        generator, mean_loss = train_generator(ctx, unprefixed(GENERATOR, broadcast), uploads, sampler)
        broadcast |= prefixed(GENERATOR, generator)
        broadcast[PRIOR] = torch.stack([u.payload[COUNTS] for u in uploads]).sum(0).to(torch.float32)
        loss = torch.tensor(mean_loss)
        if ctx.config.fedgen.header == "global":
            mean = WeightedMean()
            for upload in uploads:
                mean.add({n: t for n, t in upload.payload.items() if n.startswith(HEAD)}, upload.weight)
            broadcast |= mean.result()
    return broadcast | {ROUND: torch.tensor(float(round_index)), LOSS: loss}, broadcast


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    model = load_local(ctx, client_id, state)
    if ctx.config.fedgen.header == "global":
        model.head.load_state_dict(unprefixed(HEAD, broadcast))
    return model


def upload_spec(ctx: FederationContext, broadcast: Payload) -> UploadSpec:
    c, d = ctx.num_classes, representation_dim(ctx)
    return {f"{HEAD}weight": TensorSpec((c, d), torch.float32), f"{HEAD}bias": TensorSpec((c,), torch.float32),
            COUNTS: TensorSpec((c,), torch.float32)}


def check_upload(ctx: FederationContext, broadcast: Payload, payload: Payload) -> str | None:
    """Label counts are whole numbers >= 0 (they weigh the header in the server's ensemble)."""
    counts = payload[COUNTS]
    if bool((counts < 0).any()) or not bool((counts == counts.round()).all()):
        return f"{COUNTS} must be whole numbers >= 0"
    return None


def server_metrics(ctx: FederationContext, server_state: State) -> dict[str, float]:
    return {"generator_loss": float(server_state[LOSS])}


def describe(ctx: FederationContext) -> dict:
    return {"generator_parameters": sum(p.numel() for p in _generator_workspace(ctx).parameters()),
            "generator_output_dim": representation_dim(ctx)}


ALGORITHM = Algorithm(
    name="fedgen",
    upload_spec=upload_spec,
    check_upload=check_upload,
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    server_metrics=server_metrics,
    describe=describe,
)

register(ALGORITHM, settings=FedGenSettings,
         check_config=lambda config: refuse_mixed_heads(config, "fedgen averages the heads and"))
