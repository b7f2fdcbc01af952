"""FedGH: a global header trained on the server from clients' per-class representations.

Yi, L., Wang, G., Liu, X., Shi, Z., Yu, H. "FedGH: Heterogeneous Federated Learning with
Generalized Global Header." ACM Multimedia 2023.

A selected client replaces its local header with the global header, trains its whole local model
(CE), and uploads the mean 500-d representation of each class it holds with its class counts.
Those means (``fedgh.class_stats``): ``after_training`` (default, the paper's rule: the trained
feature extractor's representations, one forward pass over the training data after training: a
round ~1.25x slower) or ``last_epoch`` (the cheaper rule: each sample's representation as
its mini-batch's forward pass of the last local epoch computed it; training is unchanged, only the
upload differs; its accuracy effect is in docs/results/cifar10.md). The server treats every (client, class)
mean representation as a labelled sample and trains the global header on them with SGD
(``fedgh.server_lr``, ``fedgh.server_epochs``, ``fedgh.server_batch_size``; momentum and weight
decay as on the clients), really stepping its optimizer, then broadcasts it.

Evaluation (``fedgh.evaluation``): ``local_header`` (default, the authors' convention) uses each
client's model as it left its last local training, its own trained header included;
``global_header`` loads the current global header first. A client never selected yet uses the
global header either way.
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
)
from pfedlora.algorithms.class_stats import ClassSums, client_class_means
from pfedlora.algorithms.local_models import (
    LOCAL,
    head_state,
    init_local_state,
    load_local,
    refuse_mixed_heads,
    representation_dim,
)
from pfedlora.algorithms.training import cross_entropy_loss, train_epochs
from pfedlora.registry import AlgorithmSettings, register


class FedGHSettings(AlgorithmSettings):
    """FedGH (Yi et al., 2023)."""

    # the clients' lr, as in the paper
    server_lr: float = Field(default=0.01, gt=0,
                             description="Learning rate of the server's SGD on the global header (the clients' lr "
                                         "in the paper).")
    server_epochs: int = Field(default=1, ge=1,
                               description="Epochs of the server's header training per round.")
    # 1: one SGD step per (client, class) representation
    server_batch_size: int = Field(default=1, ge=1,
                                   description="Batch of the server's header training; 1: one SGD step per (client, "
                                               "class) representation.")
    class_stats: Literal["after_training", "last_epoch"] = Field(
        default="after_training",
        description="The uploaded per-class representations: from a pass over the training data after training "
                    "(after_training, the paper's rule; default) or recorded during the last local epoch (last_epoch: "
                    "no extra pass, a round about 1.25x faster; the upload differs).")
    # evaluate with the client's own trained header (the FedGH authors' convention) or with the
    # global header loaded first (as other libraries do)
    evaluation: Literal["local_header", "global_header"] = Field(default="local_header",
                                                                 description="Evaluate with the client's own "
                                                                             "trained header (local_header, the "
                                                                             "FedGH authors' convention) or with "
                                                                             "the global header loaded first "
                                                                             "(global_header).")


REPRESENTATIONS = "class_representations"
COUNTS = "class_counts"
ROUND = "round"  # server state: rounds aggregated so far (seeds the server's batch order)
TRAINED = "trained"  # client-state flag: the client has trained its own header at least once


def _header_workspace(ctx: FederationContext) -> nn.Module:
    return ctx.cached_module(("fedgh-header",), lambda: nn.Linear(representation_dim(ctx), ctx.num_classes))


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    model = ctx.new_model(ctx.smallest_model(), seed=derive_seed(ctx.config.seed, "global_header"))
    header = head_state(model)
    return header | {ROUND: torch.zeros(())}, header


def train_global_header(ctx: FederationContext, header: State, representations: torch.Tensor, labels: torch.Tensor,
                        generator: torch.Generator) -> tuple[State, TrainStats]:
    """SGD on the header with (representation, label) samples; returns the new header and stats."""
    cfg = ctx.config
    server_train = cfg.train.model_copy(update={"lr": cfg.fedgh.server_lr, "batch_size": cfg.fedgh.server_batch_size})
    module = load_into(_header_workspace(ctx), header)
    stats = train_epochs(module, module.parameters(), representations, labels, epochs=cfg.fedgh.server_epochs,
                         train=server_train, generator=generator, name="global_header")
    return prefixed("", module.state_dict()), stats


def _recording_cross_entropy(recorder: ClassSums):
    """CE on the model's output, the representation it passes through recorded per class (the
    same operations as ``cross_entropy_loss``: the model's forward is ``head(represent(x))``)."""

    def loss_fn(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rep = module.represent(x)
        recorder.record(rep, y)
        return F.cross_entropy(module.head(rep), y)

    return loss_fn


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    model = load_local(ctx, client_id, state)
    model.head.load_state_dict(broadcast)
    recorder = (ClassSums(ctx.num_classes, cfg.train.local_epochs - 1)
                if cfg.fedgh.class_stats == "last_epoch" else None)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment, epochs=cfg.train.local_epochs,
                         train=cfg.train, generator=generator, name="local_model",
                         loss_fn=_recording_cross_entropy(recorder) if recorder is not None else cross_entropy_loss,
                         on_epoch=recorder.epoch_started if recorder is not None else None)
    model.eval()
    means, counts = client_class_means(recorder, model.represent, data.train_x, data.train_y, ctx.num_classes,
                                        cfg.train.eval_batch_size, stats)
    return ClientResult(state=prefixed(LOCAL, model.state_dict()) | {TRAINED: torch.ones(())},
                        upload={REPRESENTATIONS: means, COUNTS: counts}, weight=float(data.num_train), stats=[stats])


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    header = {name: t for name, t in server_state.items() if name != ROUND}
    round_index = int(server_state[ROUND]) + 1
    representations, labels = [], []
    for upload in uploads:
        present = upload.payload[COUNTS] > 0
        representations.append(upload.payload[REPRESENTATIONS][present])
        labels.append(present.nonzero().flatten())
    if representations:
        generator = torch.Generator().manual_seed(derive_seed(ctx.config.seed, "fedgh-server", round_index))
        header, _ = train_global_header(ctx, header, torch.cat(representations), torch.cat(labels), generator)
    return header | {ROUND: torch.tensor(float(round_index))}, header


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    model = load_local(ctx, client_id, state)
    if TRAINED not in state or ctx.config.fedgh.evaluation == "global_header":
        model.head.load_state_dict(broadcast)
    return model


def upload_spec(ctx: FederationContext, broadcast: Payload) -> UploadSpec:
    return {
        REPRESENTATIONS: TensorSpec((ctx.num_classes, representation_dim(ctx)), torch.float32),
        COUNTS: TensorSpec((ctx.num_classes,), torch.float32),
    }


ALGORITHM = Algorithm(
    name="fedgh",
    upload_spec=upload_spec,
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
)

# always written: every config written so far carries this section
register(ALGORITHM, settings=FedGHSettings, always_written=True,
         check_config=lambda config: refuse_mixed_heads(config, "fedgh sends one global header and"))
