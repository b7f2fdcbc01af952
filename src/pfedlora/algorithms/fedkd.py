"""FedKD: adaptive mutual knowledge distillation with SVD-compressed updates.

Wu, C., Wu, F., Lyu, L., Huang, Y., Xie, X. "Communication-efficient federated learning via
knowledge distillation." Nature Communications 13, 2032 (2022).

Every client keeps a heterogeneous local *teacher* (its ``local_model``) and a copy of one
homogeneous *student* (``fedkd.shared_model``, default the smallest model in the pool). A
selected client loads the global student and trains both at once; with CE_t, CE_s the task losses,
h the 500-d representations and w = 1 / (CE_t + CE_s) (the adaptive weight: distillation counts
more when both models predict the labels well),

    L_teacher = CE_t + κ · w · (KL(p_s ‖ p_t) + MSE(h_t, h_s))
    L_student = CE_s + κ · w · (KL(p_t ‖ p_s) + MSE(h_s, h_t))

each distillation target being the other model's (fixed) output; κ = ``fedkd.kd_weight`` (1 in
the paper; 0 switches knowledge transfer off, and the teacher then trains as in Standalone). The student's *update*
(trained − received weights) is then compressed: each weight tensor, reshaped to a matrix, is
factorised by SVD and only the top-k singular triplets are uploaded, k the smallest number whose
energy Σσ_i² reaches the threshold T (annealed linearly from ``fedkd.energy_start`` in the first
round to ``fedkd.energy_end`` in the last, as in the paper); a tensor is sent dense when its
factors would not be smaller. The server reconstructs the updates, averages them weighted by
training sample counts, and adds the mean update to the global student.

An upload must hold, for every weight tensor, either ``NAME.dense`` or all three of ``NAME.U``,
``NAME.S``, ``NAME.V`` of one rank k; anything else is rejected by the server's validator
(reason ``malformed``) before aggregation, so a round never counts an upload it cannot use.

Deviations from the paper and its code, each a choice of this library:

* The adaptive weight w = 1 / (CE_t + CE_s) is detached: a constant within each step. In the
  paper's loss it is a function of both models' parameters, so its gradient adds terms this
  implementation does not have.
* No learnable hidden-state projection: the paper maps the student's hidden states to the
  teacher's with a learned linear layer because their widths differ; every model here exposes a
  500-d representation, so the MSE compares them directly (an identity projection). The hidden
  states are those 500-d representations (the CNNs have no attention maps).
* One learning rate for teacher and student (``train.lr``, one optimizer stepping both losses);
  the paper's code can give the student its own.
* The downlink broadcasts the global student dense (the paper also compresses it), because a
  client the simulator did not select for some rounds has no base to apply a compressed update to.

Evaluation uses the teacher (the client's local model).
"""

from __future__ import annotations

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
)
from pfedlora.algorithms.distillation import ModelPair, distillation_kl
from pfedlora.algorithms.local_models import LOCAL, init_local_state, load_local, shared_workspace
from pfedlora.algorithms.training import train_epochs
from pfedlora.models.registry import ModelName
from pfedlora.registry import AlgorithmSettings, register


class FedKDSettings(AlgorithmSettings):
    """FedKD (Wu et al., 2022)."""

    # the student; default: the smallest model in the pool
    shared_model: ModelName | None = Field(default=None,
                                     description="Architecture of the shared student; null: the smallest model in "
                                                 "the pool.")
    # SVD energy threshold, first round
    energy_start: float = Field(default=0.95, gt=0, le=1,
                                description="SVD energy threshold of the compressed updates in the first round.")
    # ... annealed linearly to this, last round
    energy_end: float = Field(default=0.98, gt=0, le=1,
                              description="SVD energy threshold in the last round (annealed linearly from "
                                          "energy_start).")
    temperature: float = Field(default=1.0, gt=0, description="Temperature of the distillation KL.")
    # scales both distillation terms (logits and hidden states); 1 is the paper, 0 switches transfer off
    kd_weight: float = Field(default=1.0, ge=0,
                             description="Scales both distillation terms (logits and hidden states); 1 is the "
                                         "paper, 0 switches transfer off.")


ENERGY = "svd_energy"  # broadcast: the energy threshold of the coming round
ROUND = "round"  # server state: rounds aggregated so far


def shared_arch(ctx: FederationContext) -> str:
    return ctx.config.fedkd.shared_model or ctx.smallest_model()


def energy_threshold(ctx: FederationContext, round_index: int) -> float:
    """T for round ``round_index`` (1-based): linear from energy_start to energy_end."""
    cfg = ctx.config.fedkd
    progress = (round_index - 1) / max(ctx.config.rounds - 1, 1)
    return cfg.energy_start + (cfg.energy_end - cfg.energy_start) * min(progress, 1.0)


def svd_compress(update: dict[str, torch.Tensor], energy: float) -> Payload:
    """Per tensor: ``NAME.U, NAME.S, NAME.V`` (top-k factors, Σ_k σ² ≥ energy · Σ σ²) or ``NAME.dense``."""
    payload: Payload = {}
    for name, tensor in update.items():
        if tensor.dim() >= 2:
            matrix = tensor.reshape(tensor.shape[0], -1).to(torch.float32)
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            squared = s.double() ** 2
            total = float(squared.sum())
            if total > 0:
                reached = torch.cumsum(squared, 0) >= energy * total * (1 - 1e-12)
                k = int(reached.nonzero()[0]) + 1 if bool(reached.any()) else s.numel()
                m, n = matrix.shape
                if k * (m + n + 1) < m * n:
                    payload[f"{name}.U"] = u[:, :k].contiguous()
                    payload[f"{name}.S"] = s[:k].contiguous()
                    payload[f"{name}.V"] = vh[:k].contiguous()
                    continue
        payload[f"{name}.dense"] = tensor.detach().clone()
    return payload


def svd_decompress(payload: Payload, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense tensors ``svd_compress`` encoded (shapes from ``like``)."""
    out = {}
    for name, reference in like.items():
        if f"{name}.dense" in payload:
            out[name] = payload[f"{name}.dense"]
        else:
            u, s, v = payload[f"{name}.U"], payload[f"{name}.S"], payload[f"{name}.V"]
            out[name] = ((u * s) @ v).reshape(reference.shape)
    return out


init_client = init_local_state  # a private local model, nothing else


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    student = ctx.new_model(shared_arch(ctx), seed=derive_seed(ctx.config.seed, "shared_model"))
    weights = prefixed("", student.state_dict())
    return weights | {ROUND: torch.zeros(())}, weights | {ENERGY: torch.tensor(energy_threshold(ctx, 1))}


def adaptive_mutual_loss(temperature: float, kd_weight: float = 1.0):
    def loss_fn(pair: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        teacher, student = pair.local_model, pair.shared_model
        h_t, h_s = teacher.represent(x), student.represent(x)
        logits_t, logits_s = teacher.head(h_t), student.head(h_s)
        ce_t, ce_s = F.cross_entropy(logits_t, y), F.cross_entropy(logits_s, y)
        w = kd_weight / (ce_t + ce_s).detach().clamp(min=1e-6)
        teacher_loss = ce_t + w * (distillation_kl(logits_t, logits_s, temperature) + F.mse_loss(h_t, h_s.detach()))
        student_loss = ce_s + w * (distillation_kl(logits_s, logits_t, temperature) + F.mse_loss(h_s, h_t.detach()))
        return teacher_loss + student_loss

    return loss_fn


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    cfg = ctx.config
    received = {name: t for name, t in broadcast.items() if name != ENERGY}
    pair = ModelPair(load_local(ctx, client_id, state), load_into(shared_workspace(ctx, shared_arch(ctx)), received))
    stats = train_epochs(pair, pair.parameters(), data.train_x, data.train_y, augment=data.augment, epochs=cfg.train.local_epochs,
                         train=cfg.train, generator=generator, loss_fn=adaptive_mutual_loss(cfg.fedkd.temperature, cfg.fedkd.kd_weight),
                         name="local_model+shared_model")
    update = {name: t.detach() - received[name] for name, t in pair.shared_model.state_dict().items()}
    upload = svd_compress(update, float(broadcast[ENERGY]))
    return ClientResult(state=prefixed(LOCAL, pair.local_model.state_dict()), upload=upload,
                        weight=float(data.num_train), stats=[stats])


def aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    weights = {name: t for name, t in server_state.items() if name != ROUND}
    round_index = int(server_state[ROUND]) + 1
    if uploads:
        mean_update = WeightedMean()
        for upload in uploads:  # validated: every tensor dense or as factors of one rank
            mean_update.add(svd_decompress(upload.payload, weights), upload.weight)
        if mean_update.total_weight > 0:
            update = mean_update.result(like=weights)
            weights = {name: weights[name] + update[name] for name in weights}
    state = weights | {ROUND: torch.tensor(float(round_index))}
    return state, weights | {ENERGY: torch.tensor(energy_threshold(ctx, round_index + 1))}


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    return load_local(ctx, client_id, state)


def describe(ctx: FederationContext) -> dict:
    return {"shared_model": shared_arch(ctx), "shared_model_parameters": ctx.model_parameters(shared_arch(ctx))}


def upload_spec(ctx: FederationContext, broadcast: Payload) -> UploadSpec:
    """Each matrix-like tensor travels dense or as rank-k factors (k free, at most full rank)."""
    spec: UploadSpec = {}
    for name, tensor in broadcast.items():
        if name == ENERGY:
            continue
        if tensor.dim() >= 2:
            m, n = tensor.shape[0], tensor[0].numel()
            r = min(m, n)
            spec[f"{name}.U"] = TensorSpec((m, None), tensor.dtype, max_numel=m * r, optional=True)
            spec[f"{name}.S"] = TensorSpec((None,), tensor.dtype, max_numel=r, optional=True)
            spec[f"{name}.V"] = TensorSpec((None, n), tensor.dtype, max_numel=r * n, optional=True)
        spec[f"{name}.dense"] = TensorSpec(tuple(tensor.shape), tensor.dtype, optional=tensor.dim() >= 2)
    return spec


def check_upload(ctx: FederationContext, broadcast: Payload, payload: Payload) -> str | None:
    """Each weight tensor dense, or as U (m x k), S (k), V (k x n) of one rank k; never both, never neither."""
    for name, tensor in broadcast.items():
        if name == ENERGY:
            continue
        factors = [f"{name}.{part}" for part in "USV"]
        present = [key for key in factors if key in payload]
        dense = f"{name}.dense" in payload
        if dense and present:
            return f"{name} sent both dense and as factors"
        if not dense and len(present) < 3:
            missing = [key for key in factors if key not in payload]
            return f"{name} needs {name}.dense or all of U, S, V; missing {', '.join(missing)}"
        if not dense:
            u, s, v = (payload[key] for key in factors)
            if not (u.shape[1] == s.shape[0] == v.shape[0]):
                return f"{name}: factor ranks differ (U {u.shape[1]}, S {s.shape[0]}, V {v.shape[0]})"
    return None


ALGORITHM = Algorithm(
    name="fedkd",
    upload_spec=upload_spec,
    check_upload=check_upload,
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    describe=describe,
)

# always written: every config written so far carries this section
register(ALGORITHM, settings=FedKDSettings, always_written=True)
