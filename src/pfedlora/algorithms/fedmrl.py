"""FedMRL: federated model-heterogeneous Matryoshka representation learning.

Yi, L., Yu, H., Ren, C., Wang, G., Liu, X., Li, X. "Federated Model Heterogeneous Matryoshka
Representation Learning." NeurIPS 2024 (arXiv:2406.00488).

Every client k keeps its heterogeneous local model F_k (extractor F_k^ex, header F_k^hd), a private
linear *projector* P_k and a copy of one small homogeneous *global model* G (``fedmrl.shared_model``,
default the smallest model in the pool) whose representation layer is narrowed to
d1 = ``fedmrl.sub_feature_dim`` dimensions (its header reads d1 dimensions). With d2 the local
model's representation dimension (500 here) and one mini-batch x, y:

    R^G = G^ex(x) (d1),  R^F = F_k^ex(x) (d2),  R~ = P_k([R^G ; R^F])   (P_k: d1 + d2 -> d2)
    L = CE(F_k^hd(R~), y) + CE(G^hd(R~[:, :d1]), y)

The fused representation R~ is a Matryoshka representation: its first d1 dimensions (coarse) feed
the global header, all d2 (fine) the local header. One optimizer steps F_k, P_k and G together on L
(the paper's two loss weights are both 1). The client uploads only G; the server averages it weighted
by training sample counts (FedAvg) and broadcasts it. The upload is exactly the broadcast's tensors
and the new broadcast their weighted mean, so client-level DP and SecAgg+ apply (``averages_uploads``).
F_k and P_k stay on the client; **P_k's trained weights persist across rounds** in the client state.
Evaluation (inference) uses F_k^hd(P_k([G^ex(x) ; F_k^ex(x)])) with the latest global model, without
the global header, as in the paper.

``fedmrl.global_weight`` (w, default 1 = the paper) weighs the global branch, the only channel of
federated knowledge into the local model: the local header reads w·R~ + (1 − w)·R^F and the global
header's loss counts w·CE. At w = 0 nothing of G or P_k touches F_k's loss: F_k trains exactly as
in Standalone (bit for bit, tested) and G is not trained (the upload equals the broadcast).
Values between 0 and 1 are an ablation knob, not part of the paper.

Differences from HtFLlib's port (``clientmrl.py``), each following the paper:

* HtFLlib saves the projector at client creation and never again after training, so every round
  starts from the initial projector and its updates are lost; here they persist (tested).
* HtFLlib narrows the global model's representation by average-pooling its 512-d output to
  ``sub_feature_dim`` (parameter-free); here the global model's last representation layer outputs
  d1 dimensions directly, a small model with a d1-dimensional representation as in the paper.

Default d1 = 100: the paper studies d1 from 100 to 500 with d2 = 500; HtFLlib's default is 128 of 512
(about the same ratio). The learning rate and schedule are the library's (``train.*``) for all three
parts, as for every other algorithm.
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
    unprefixed,
)
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local
from pfedlora.algorithms.training import train_epochs
from pfedlora.errors import UserError
from pfedlora.models.cnn import REPRESENTATION_DIM
from pfedlora.models.registry import ModelName, parameter_count
from pfedlora.registry import AlgorithmSettings, register


class FedMRLSettings(AlgorithmSettings):
    """FedMRL (Yi et al., NeurIPS 2024)."""

    sub_feature_dim: int = Field(
        default=100, ge=1, le=REPRESENTATION_DIM,
        description="d1: the global model's representation dimension, also the Matryoshka prefix of the fused "
                    "representation its header reads (at most the local models' representation dimension, 500).")
    shared_model: ModelName | None = Field(
        default=None, description="The global model's architecture; default: the smallest model in the pool.")
    global_weight: float = Field(
        default=1.0, ge=0, le=1,
        description="Weight of the global branch (fusion into the local header and the global header's loss): "
                    "1 is the paper; 0 switches federated knowledge off (the local model trains as in Standalone).")


PROJECTOR = "projector."


def shared_arch(ctx: FederationContext) -> str:
    return ctx.config.fedmrl.shared_model or ctx.smallest_model()


def _narrow_representation(model: nn.Module, dim: int, num_classes: int) -> nn.Module:
    """Make ``model``'s representation ``dim``-dimensional: its last representation Linear (the
    last Linear before ``head``, whose output is the representation) and its header are rebuilt."""
    width = model.representation_dim
    last = [name for name, sub in model.named_modules()
            if isinstance(sub, nn.Linear) and name != "head" and sub.out_features == width]
    if not last:
        raise UserError(f"FedMRL cannot narrow the representation of {type(model).__name__}: no Linear layer outputs it")
    parent_name, _, child = last[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, nn.Linear(old.in_features, dim, bias=old.bias is not None))
    model.head = nn.Linear(dim, num_classes)
    model.representation_dim = dim
    return model


def new_global_model(ctx: FederationContext, seed: int) -> nn.Module:
    """The small homogeneous global model with a ``sub_feature_dim``-dimensional representation."""
    with torch.random.fork_rng(devices=[]):
        model = ctx.new_model(shared_arch(ctx), seed=seed)
        torch.manual_seed(derive_seed(seed, "fedmrl-narrow"))
        _narrow_representation(model, ctx.config.fedmrl.sub_feature_dim, ctx.num_classes)
    return model.to(ctx.device)


def _global_workspace(ctx: FederationContext) -> nn.Module:
    key = ("fedmrl-global_model", shared_arch(ctx), ctx.config.fedmrl.sub_feature_dim)
    return ctx.cached_module(key, lambda: new_global_model(ctx, seed=0))


def _local_dim(ctx: FederationContext, client_id: int) -> int:
    arch = ctx.client_arch(client_id)
    return int(ctx.cached_module(("model", arch), lambda: ctx.new_model(arch, seed=0)).representation_dim)


def _check_dims(ctx: FederationContext, client_id: int) -> tuple[int, int]:
    d1, d2 = ctx.config.fedmrl.sub_feature_dim, _local_dim(ctx, client_id)
    if d1 > d2:
        raise UserError(f"fedmrl.sub_feature_dim {d1} exceeds the {d2}-d representation of client {client_id}'s "
                        f"model {ctx.client_arch(client_id)}: the global header reads the first d1 of its dimensions")
    return d1, d2


def new_projector(ctx: FederationContext, client_id: int, seed: int) -> nn.Linear:
    d1, d2 = _check_dims(ctx, client_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = nn.Linear(d1 + d2, d2)
    return projector.to(ctx.device)


def _projector_workspace(ctx: FederationContext, client_id: int) -> nn.Module:
    d1, d2 = _check_dims(ctx, client_id)
    return ctx.cached_module(("fedmrl-projector", d1, d2), lambda: new_projector(ctx, client_id, seed=0))


class MatryoshkaModel(nn.Module):
    """A client's local model, projector and copy of the global model; ``forward`` is the local
    header on the fused representation (what a client is evaluated with)."""

    def __init__(self, local_model: nn.Module, global_model: nn.Module, projector: nn.Module,
                 sub_feature_dim: int, global_weight: float) -> None:
        super().__init__()
        self.local_model = local_model
        self.global_model = global_model
        self.projector = projector
        self.sub_feature_dim = sub_feature_dim
        self.global_weight = global_weight

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(local header's logits, global header's logits or None when the global branch is off)."""
        local_rep = self.local_model.represent(x)
        w = self.global_weight
        if w == 0:
            return self.local_model.head(local_rep), None
        fused = self.projector(torch.cat((self.global_model.represent(x), local_rep), dim=1))
        local_in = fused if w == 1 else w * fused + (1 - w) * local_rep
        return self.local_model.head(local_in), self.global_model.head(fused[:, : self.sub_feature_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[0]


def matryoshka_loss(module: MatryoshkaModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    local_logits, global_logits = module.outputs(x)
    loss = F.cross_entropy(local_logits, y)
    if global_logits is not None:
        loss = loss + module.global_weight * F.cross_entropy(global_logits, y)
    return loss


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    model = new_global_model(ctx, seed=derive_seed(ctx.config.seed, "fedmrl-global_model"))
    weights = prefixed("", model.state_dict())
    return weights, dict(weights)


def init_client(ctx: FederationContext, client_id: int) -> State:
    """The local model (seeded as in Standalone) and a fresh projector."""
    projector = new_projector(ctx, client_id, seed=derive_seed(ctx.config.seed, "fedmrl-projector", client_id))
    return init_local_state(ctx, client_id) | prefixed(PROJECTOR, projector.state_dict())


def _assemble(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> MatryoshkaModel:
    cfg = ctx.config.fedmrl
    return MatryoshkaModel(load_local(ctx, client_id, state), load_into(_global_workspace(ctx), broadcast),
                           load_into(_projector_workspace(ctx, client_id), unprefixed(PROJECTOR, state)),
                           cfg.sub_feature_dim, cfg.global_weight)


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    model = _assemble(ctx, client_id, state, broadcast)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment,
                         epochs=cfg.train.local_epochs, train=cfg.train, generator=generator,
                         loss_fn=matryoshka_loss, name="local_model+projector+global_model")
    # the local model and the projector stay with the client, trained; only the global model travels
    new_state = prefixed(LOCAL, model.local_model.state_dict()) | prefixed(PROJECTOR, model.projector.state_dict())
    return ClientResult(state=new_state, upload=prefixed("", model.global_model.state_dict()),
                        weight=float(data.num_train), stats=[stats])


aggregate = fedavg_aggregate  # the global model is the sample-weighted mean of the uploads


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return _assemble(ctx, client_id, state, broadcast)


def describe(ctx: FederationContext) -> dict:
    d1 = ctx.config.fedmrl.sub_feature_dim
    return {"shared_model": shared_arch(ctx), "sub_feature_dim": d1,
            "global_model_parameters": parameter_count(_global_workspace(ctx)),
            "projector_parameters": parameter_count(_projector_workspace(ctx, 0))}


ALGORITHM = Algorithm(
    name="fedmrl",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    describe=describe,
    # the upload is the broadcast's tensors and the aggregate their weighted mean (DP, SecAgg+)
    averages_uploads=lambda config: True,
)

register(ALGORITHM, settings=FedMRLSettings)
