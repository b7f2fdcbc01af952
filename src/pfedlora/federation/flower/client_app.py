"""The Flower ClientApp: one SuperNode = one pfedlora client (partition).

The node config says which partition this node holds (``partition-id``, ``num-partitions``), and
optionally its local model architecture (``model``), its data paths (``dataset-path``, ``cache-dir``,
...) and its privacy floor (``privacy-mode``, ``min-noise-multiplier``, ...; see
:mod:`pfedlora.federation.flower.floor`). The federation config comes from the server with every
message; one below the node's floor, or naming other data paths, is refused: one line in the node's
log, an error reply, nothing uploaded. The client's algorithm state (e.g.
its local model and adapter) persists across rounds in Flower's ``Context.state``; training runs
the algorithm's own ``client_update`` with the simulator's per-(round, client) generator.

With ``privacy.mode`` set, the upload is clipped (and in local mode noised) before it leaves, as in
the simulator. With ``flower.secagg.enabled`` a training round is Flower's SecAgg+ protocol: the
mod answers its key-exchange stages, and the train handler answers the collect stage with the
update that the mod quantises and masks (:mod:`pfedlora.federation.flower.secagg`).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log as flwr_log
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from pfedlora.algorithms.base import ClientData, FederationContext
from pfedlora.config import Config, build_config
from pfedlora.errors import UserError
from pfedlora.federation.flower import protocol
from pfedlora.federation.flower.floor import FloorRefusal, check_floor, pin_data_paths
from pfedlora.federation.flower.payload import from_array_record, to_array_record
from pfedlora.federation.flower.secagg import (
    PAD,
    WEIGHT,
    fit_reply,
    is_secagg_message,
    read_fit_instructions,
    secaggplus_when_asked,
)
from pfedlora.federation.privacy import update_of
from pfedlora.federation.simulation import Federation, client_generator
from pfedlora.metrics.accuracy import accuracy

app = ClientApp()


def node_config_for(config: Config, node_config: dict, *, plaintext_training: bool = False) -> tuple[Config, int]:
    """The config as this node sees it (its own architecture and data paths) and its client id;
    :class:`FloorRefusal` when the server's config is below the node's privacy floor or names other
    data paths (``plaintext_training``: the message is a training round outside SecAgg+)."""
    if protocol.NODE_PARTITION not in node_config:
        raise UserError(f"node config: {protocol.NODE_PARTITION!r} is missing; start the SuperNode with "
                        f"--node-config \"partition-id=K num-partitions=N\"")
    client_id = int(node_config[protocol.NODE_PARTITION])
    num = int(node_config.get(protocol.NODE_NUM_PARTITIONS, config.num_clients))
    if num != config.num_clients:
        raise UserError(f"node config: num-partitions={num} but the run has num_clients={config.num_clients}")
    if not 0 <= client_id < config.num_clients:
        raise UserError(f"node config: partition-id={client_id} is not in 0..{config.num_clients - 1}")
    check_floor(config, node_config, plaintext_training=plaintext_training)
    config = pin_data_paths(config, node_config)
    model = node_config.get(protocol.NODE_MODEL)
    if model:
        models = [config.client_model(k) for k in range(config.num_clients)]
        models[client_id] = str(model)
        config = build_config(config.to_dict() | {"client_models": models})
    return config, client_id


def _refused(msg: Message, refusal: FloorRefusal) -> Message:
    """The node's answer to a message below its floor: one line in its log, an error reply, no upload."""
    flwr_log(logging.WARNING, "pfedlora: refused a %s message: %s", msg.metadata.message_type, refusal)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"refused by the node: {refusal}"),
                   reply_to=msg)


def _floor_first(handler):
    """Runs ``handler``; a FloorRefusal anywhere in it becomes the node's one-line refusal."""
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except FloorRefusal as refusal:
            return _refused(msg, refusal)
    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


def _secagg_floor(msg: Message, context: Context, call_next) -> Message:
    """Before Flower's secaggplus_mod: the collect stage (the one that carries the config and gets the
    update) is checked against the floor first, so a refused round sends no masked vector."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is not None and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS:
        try:
            sent, _ = read_fit_instructions(msg)
            node_config_for(protocol.config_from_text(str(sent["config"])), dict(context.node_config))
        except FloorRefusal as refusal:
            return _refused(msg, refusal)
    return secaggplus_when_asked(msg, context, call_next)


@lru_cache(maxsize=2)
def _federation(config_text: str) -> Federation:
    # cached: a ClientApp process that serves several messages (simulation runtime) loads data once
    return Federation.build(protocol.config_from_text(config_text))


def _setup(msg: Message, context: Context, config_text: str | None = None,
           plaintext_training: bool = False) -> tuple[Federation, int, ClientData]:
    text = config_text if config_text is not None else str(msg.content[protocol.CONFIG]["config"])
    config, client_id = node_config_for(protocol.config_from_text(text), dict(context.node_config),
                                        plaintext_training=plaintext_training)
    federation = _federation(protocol.config_to_text(config))
    return federation, client_id, federation.clients[client_id]


def _load_state(federation: Federation, context: Context, client_id: int):
    if protocol.STATE_KEY in context.state:
        return from_array_record(context.state[protocol.STATE_KEY], federation.context.device)
    return federation.algorithm.init_client(federation.context, client_id)


@app.query()
@_floor_first
def query(msg: Message, context: Context) -> Message:
    """This node's partition, architecture and data facts (the server maps nodes to client ids)."""
    federation, client_id, data = _setup(msg, context)
    ctx: FederationContext = federation.context
    info = ConfigRecord({
        "partition-id": client_id,
        "model": ctx.client_arch(client_id),
        "model-parameters": ctx.model_parameters(ctx.client_arch(client_id)),
        "input-shape": [int(v) for v in ctx.input_shape],
        "num-classes": int(ctx.num_classes),
        "num-train": data.num_train,
        "partition": json.dumps(federation.partition["clients"][client_id]),
    })
    return Message(RecordDict({protocol.INFO: info}), reply_to=msg)


@app.train(mods=[_secagg_floor])
@_floor_first
def train(msg: Message, context: Context) -> Message:
    if is_secagg_message(msg):  # the collect stage of a SecAgg+ round (the mod handles the others)
        return _train_secagg(msg, context)
    federation, client_id, data = _setup(msg, context, plaintext_training=True)
    sent = msg.content[protocol.CONFIG]
    round_index = int(sent["round"])
    broadcast = from_array_record(msg.content[protocol.PAYLOAD], federation.context.device, as_float32=True)
    result, metrics = _client_round(federation, context, client_id, int(sent["client-id"]), round_index, broadcast, data)
    privacy = federation.privacy
    upload = privacy.client_upload(result.upload, broadcast, round_index, client_id)
    # under DP the server weighs every upload 1 itself; the sample count and the training losses (raw,
    # per client, outside the mechanism) stay on the node
    metrics["weight"] = float(privacy.weight(result.weight))
    losses = [float(s.mean_loss) for s in result.stats if s.num_steps] if not privacy.enabled else []
    metrics["num-losses"] = len(losses)
    record = MetricRecord(metrics)
    if losses:
        record["train-losses"] = losses
    return Message(RecordDict({protocol.PAYLOAD: to_array_record(upload, federation.config.payload_dtype),
                               protocol.METRICS: record}), reply_to=msg)


def _client_round(federation: Federation, context: Context, client_id: int, addressed_to: int, round_index: int,
                  broadcast, data: ClientData):
    """Run the algorithm's ``client_update`` and keep the new client state; (result, metrics)."""
    if addressed_to != client_id:
        raise UserError(f"message for client {addressed_to} reached partition {client_id}")
    state = _load_state(federation, context, client_id)
    result = federation.algorithm.client_update(
        federation.context, client_id, state, broadcast, data, client_generator(federation.config, round_index, client_id)
    )
    context.state[protocol.STATE_KEY] = to_array_record(result.state)
    losses = [float(s.mean_loss) for s in result.stats if s.num_steps]
    return result, {"num-losses": len(losses)}


def _train_secagg(msg: Message, context: Context) -> Message:
    """The update (clipped and noised under DP) and the weight the server set, for secaggplus_mod to
    quantise and mask; a padding node (``pad``) sends a zero update and keeps its state."""
    sent, broadcast = read_fit_instructions(msg)
    federation, client_id, data = _setup(msg, context, str(sent["config"]))
    round_index = int(sent["round"])
    broadcast = {name: tensor.to(federation.context.device) for name, tensor in broadcast.items()}
    if bool(sent.get(PAD, False)):
        zeros = {name: torch.zeros(t.shape, dtype=torch.float64) for name, t in broadcast.items()}
        return fit_reply(msg, zeros, int(sent[WEIGHT]), {})
    result, metrics = _client_round(federation, context, client_id, int(sent["client-id"]), round_index, broadcast, data)
    privacy = federation.privacy
    update = (privacy.client_update(result.upload, broadcast, round_index, client_id) if privacy.enabled
              else update_of(result.upload, broadcast))
    # no training loss and no loss count: secaggplus_mod masks only the update and the weight, and anything
    # else in the reply would reach the server in plaintext, one value per client. The weight is the one the
    # server set (1 under DP, else the sample count it learnt from the query), not the node's own.
    return fit_reply(msg, update, int(sent[WEIGHT]), {})


@app.evaluate()
@_floor_first
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy (percent) of this client's personalized model on its local test split."""
    federation, client_id, data = _setup(msg, context)
    broadcast = from_array_record(msg.content[protocol.PAYLOAD], federation.context.device, as_float32=True)
    state = _load_state(federation, context, client_id)
    model = federation.algorithm.personalized_model(federation.context, client_id, state, broadcast)
    acc = accuracy(model, data.test_x, data.test_y, federation.config.train.eval_batch_size, normalize=data.normalize)
    # an empty test split has no accuracy: num-test 0 tells the server to leave it out of the mean
    metrics = {"accuracy": float(acc) if acc is not None else 0.0, "num-test": int(data.test_y.shape[0])}
    if federation.algorithm.evaluation_metrics is not None and acc is not None:  # diagnostics, e.g. adapter share
        diagnostics = federation.algorithm.evaluation_metrics(federation.context, client_id, state, broadcast, data)
        metrics |= {f"{protocol.DIAGNOSTIC_PREFIX}{key}": float(value) for key, value in diagnostics.items()}
    return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)
