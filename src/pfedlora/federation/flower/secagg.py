"""Secure aggregation on Flower with Flower's own SecAgg+ (no cryptography of ours).

Server: one training round runs Flower's ``SecAggPlusWorkflow`` (setup, share keys, collect masked
vectors, unmask). The workflow is written for Flower's legacy Strategy API, so a small
:class:`_RoundStrategy` hands it the round's fit instructions (one per selected client: the
broadcast, the config, the client id) and receives the one thing the server learns: the
aggregate. Client: :func:`secaggplus_when_asked` runs Flower's ``secaggplus_mod`` on the messages
of a SecAgg+ round; the ClientApp's train handler answers the collect stage with the client's
*update* (upload - broadcast: small values, so SecAgg+'s fixed-point quantisation over
[-clipping_range, clipping_range] loses little) and its weight.

Weighting: SecAgg+ masks ``[w, w * update]`` and the server divides the unmasked sums, so the
aggregate is the ``w``-weighted mean of the updates. The server sets ``w`` and sends it with each
client's instructions (the client masks that weight, not one of its own): the sample count (the
plaintext FedAvg weights, known to the server from the query; ``max_weight`` is the largest of the
round's clients) or 1 under differential privacy (uniform weights, as DP accounting requires).

Quantisation error: every coordinate of ``(w / max_weight) * update`` is stochastically rounded to
a grid of step ``2 * clipping_range / quantization_range`` (default 16 / 2^22 = 3.8e-6), so the
mean update is off by at most ``n * step / sum_i(w_i / max_weight)`` per coordinate (n clients),
plus the rounding of each weight to ``1 / quantization_range`` of ``max_weight``. Values beyond
``clipping_range`` would be clamped: updates stay far below 8 in practice (clip them with
``privacy.clip_norm`` to be sure).

What the server cannot do under SecAgg+: see or validate one client's update (norm bounds, NaN
checks), or clip it; under ``privacy.mode central`` clipping is the clients' (honest-but-curious
model) and the server adds the noise to the unmasked mean.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from pfedlora.algorithms.base import Payload
from pfedlora.config import Config

NAMES = "names"  # fit config key: the payload's tensor names, in the order of the parameters (JSON)
WEIGHT = "weight"  # fit config key: the aggregation weight the server sets for this client
PAD = "pad"  # fit config key: true for a node that only pads a round (a zero update, no training)


# ---- client side ------------------------------------------------------------------------------


def secaggplus_when_asked(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round; plain training messages pass by."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secagg_message(msg: Message) -> bool:
    return RECORD_KEY_CONFIGS in msg.content.config_records


def read_fit_instructions(msg: Message) -> tuple[dict[str, Any], Payload]:
    """(fit config, broadcast) of a SecAgg+ collect-stage message."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    names = json.loads(str(fitins.config[NAMES]))
    arrays = parameters_to_ndarrays(fitins.parameters)
    broadcast = {name: torch.from_numpy(np.array(array, copy=True)) for name, array in zip(names, arrays)}
    return dict(fitins.config), broadcast


def fit_reply(msg: Message, update: dict[str, torch.Tensor], weight: int, metrics: dict[str, float | int]) -> Message:
    """The collect-stage answer the mod masks: the update (in the broadcast's order) and its weight."""
    arrays = [tensor.detach().cpu().to(torch.float64).numpy() for tensor in update.values()]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), int(weight), dict(metrics))
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# ---- server side ------------------------------------------------------------------------------


class _NodeProxy(ClientProxy):
    """A node id for the legacy workflow; nothing is ever called on it."""

    def __init__(self, node_id: int) -> None:
        super().__init__(cid=str(node_id))
        self.node_id = node_id

    def _unused(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the SecAgg+ workflow talks to nodes through the Grid")

    get_properties = get_parameters = fit = evaluate = reconnect = _unused


class _RoundStrategy(Strategy):
    """This round's fit instructions for ``SecAggPlusWorkflow``; keeps the aggregate it hands back."""

    def __init__(self, instructions: list[tuple[ClientProxy, FitIns]]) -> None:
        self.instructions = instructions
        self.aggregate: list[np.ndarray] | None = None
        self.results: list[tuple[ClientProxy, FitRes]] = []

    def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        return self.instructions

    def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
        self.results = list(results)
        if not results:
            return None, {}
        parameters: Parameters = results[0][1].parameters  # every result carries the unmasked aggregate
        self.aggregate = parameters_to_ndarrays(parameters)
        return parameters, {}

    def initialize_parameters(self, client_manager):  # noqa: ANN001, ANN201
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        return []

    def aggregate_evaluate(self, server_round, results, failures):  # noqa: ANN001, ANN201
        return None, {}

    def evaluate(self, server_round, parameters):  # noqa: ANN001, ANN201
        return None


def content_bytes(content: RecordDict) -> int:
    """Bytes of data a message carries: tensor data of its arrays, plus the SecAgg+ protocol values
    (keys, encrypted shares, masked vectors, node ids). The pfedlora config text that travels with
    every message is framing, as in the plaintext count, and is left out."""
    total = 0
    for record in content.array_records.values():
        total += sum(int(a.numpy().nbytes) for a in record.values())
    record = content.config_records.get(RECORD_KEY_CONFIGS)
    for value in (record or {}).values():
        for item in value if isinstance(value, list) else [value]:
            total += len(item) if isinstance(item, (bytes, str)) else 8
    return total


class MeteredGrid:
    """The Grid the workflow talks to: counts bytes both ways and logs each SecAgg+ stage as it starts."""

    def __init__(self, grid: Grid, log: Callable[[str], None], round_index: int) -> None:
        self._grid = grid
        self._log = log
        self._round = round_index
        self.down_bytes = 0
        self.up_bytes = 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        stages = {str(m.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, "?"))
                  for m in messages if RECORD_KEY_CONFIGS in m.content.config_records}
        self._log(f"round {self._round}: SecAgg+ stage {', '.join(sorted(stages))}: {len(messages)} nodes")
        self.down_bytes += sum(content_bytes(m.content) for m in messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.up_bytes += sum(content_bytes(r.content) for r in replies if not r.has_error())
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@dataclass
class SecureRound:
    """What one SecAgg+ round gave the server."""

    mean_update: dict[str, torch.Tensor] | None  # the weighted mean update (None: the protocol halted)
    contributors: list[int]  # client ids whose masked vectors were summed
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)  # per contributor, as reported
    up_bytes: int = 0
    down_bytes: int = 0
    seconds: float = 0.0


def secure_round(grid: Grid, config: Config, config_text: str, round_index: int, broadcast: Payload,
                 node_of: dict[int, int], weights: dict[int, float], log: Callable[..., None],
                 pads: set[int] = frozenset()) -> SecureRound:
    """One training round through SecAgg+ for the clients in ``node_of`` (client id -> node id);
    ``weights``: each client's aggregation weight (its sample count, or 1 under DP), sent to it with
    its instructions (the client masks that weight, not one of its own); ``pads``: clients that add
    a zero update without training (a lone sampled client under central DP, see the ServerApp)."""
    started = time.perf_counter()
    settings = config.flower.secagg
    names = list(broadcast)
    parameters = ndarrays_to_parameters([broadcast[n].detach().cpu().to(torch.float32).numpy() for n in names])
    instructions = [
        (_NodeProxy(node), FitIns(parameters, {"config": config_text, "round": round_index, "client-id": client_id,
                                               NAMES: json.dumps(names), WEIGHT: int(round(weights[client_id])),
                                               PAD: client_id in pads}))
        for client_id, node in sorted(node_of.items())
    ]
    strategy = _RoundStrategy(instructions)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_index})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    workflow = SecAggPlusWorkflow(
        num_shares=settings.num_shares, reconstruction_threshold=settings.reconstruction_threshold,
        max_weight=float(max(weights[k] for k in node_of)), clipping_range=settings.clipping_range,
        quantization_range=settings.quantization_range, timeout=config.flower.round_timeout)
    metered = MeteredGrid(grid, log, round_index)
    workflow(metered, context)  # type: ignore[arg-type]
    client_of = {node: client for client, node in node_of.items()}
    contributors = sorted(client_of[proxy.node_id] for proxy, _ in strategy.results)
    metrics = {client_of[proxy.node_id]: dict(res.metrics) for proxy, res in strategy.results}
    mean = None
    if strategy.aggregate is not None:
        mean = {name: torch.from_numpy(np.asarray(array, dtype=np.float64)).reshape(broadcast[name].shape)
                for name, array in zip(names, strategy.aggregate)}
    return SecureRound(mean, contributors, metrics, metered.up_bytes, metered.down_bytes,
                       time.perf_counter() - started)

