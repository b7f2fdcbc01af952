"""LG-FedAvg: local feature extractors, a global classification header.

Liang, P. P., Liu, T., Ziyin, L., Allen, N. B., Auerbach, R. P., Brent, D., Salakhutdinov, R.,
Morency, L.-P. "Think Locally, Act Globally: Federated Learning with Local and Global
Representations." arXiv:2001.01523, 2020.

Every local model here ends in the same ``head`` (Linear 500 -> classes), so the header is the
homogeneous, global part: a selected client loads the global header into its model, trains the
whole model, and uploads the header; the server averages headers weighted by training sample
counts. Deviation: the paper's global part is the last layers of a homogeneous model; with
heterogeneous extractors only the header can be shared (as in the MHPFL benchmarks of FedGH and
pFedLoRA).

Evaluation (``lg_fedavg.evaluation``): ``local_header`` (default) uses each client's model as it
left its last local training, its own trained header included (the FedGH authors' convention for
this baseline); ``global_header`` loads the current global header first, as other libraries do.
A client never selected yet uses the global header either way.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
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
    prefixed,
)
from pfedlora.algorithms.local_models import LOCAL, head_state, init_local_state, load_local, refuse_mixed_heads
from pfedlora.algorithms.training import train_epochs
from pfedlora.registry import AlgorithmSettings, register


class LGFedAvgSettings(AlgorithmSettings):
    """LG-FedAvg (Liang et al., 2020)."""

    # evaluate with the client's own trained header, or with the global header loaded first
    evaluation: Literal["local_header", "global_header"] = Field(default="local_header",
                                                                 description="Evaluate with the client's own "
                                                                             "trained header (local_header) or with "
                                                                             "the global header loaded first "
                                                                             "(global_header).")


TRAINED = "trained"  # client-state flag: the client has trained its own header at least once


def init_server(ctx: FederationContext) -> tuple[State, Payload]:
    model = ctx.new_model(ctx.smallest_model(), seed=derive_seed(ctx.config.seed, "global_header"))
    header = head_state(model)
    return header, dict(header)


def init_client(ctx: FederationContext, client_id: int) -> State:
    return init_local_state(ctx, client_id)


def client_update(ctx: FederationContext, client_id: int, state: State, broadcast: Payload,
                  data: ClientData, generator: torch.Generator) -> ClientResult:
    model = load_local(ctx, client_id, state)
    model.head.load_state_dict(broadcast)
    stats = train_epochs(model, model.parameters(), data.train_x, data.train_y, augment=data.augment,
                         epochs=ctx.config.train.local_epochs, train=ctx.config.train, generator=generator,
                         name="local_model")
    new_state = prefixed(LOCAL, model.state_dict()) | {TRAINED: torch.ones(())}
    return ClientResult(state=new_state, upload=head_state(model),
                        weight=float(data.num_train), stats=[stats])


aggregate = fedavg_aggregate  # the server state is the sample-weighted mean of the uploads


def personalized_model(ctx: FederationContext, client_id: int, state: State, broadcast: Payload) -> nn.Module:
    model = load_local(ctx, client_id, state)
    if TRAINED not in state or ctx.config.lg_fedavg.evaluation == "global_header":
        model.head.load_state_dict(broadcast)
    return model


ALGORITHM = Algorithm(
    name="lg_fedavg",
    init_server=init_server,
    init_client=init_client,
    client_update=client_update,
    aggregate=aggregate,
    personalized_model=personalized_model,
    # the upload is the broadcast's tensors and the aggregate their weighted mean (DP, SecAgg+)
    averages_uploads=lambda config: True,
)

# always written: every config written so far carries this section
register(ALGORITHM, settings=LGFedAvgSettings, always_written=True,
         check_config=lambda config: refuse_mixed_heads(config, "lg_fedavg averages the heads and"))
