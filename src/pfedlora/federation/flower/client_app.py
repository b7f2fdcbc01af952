"""The Flower ClientApp: one SuperNode = one pfedlora client (partition).

The node config says which partition this node holds (``partition-id``, ``num-partitions``), and
optionally its local model architecture (``model``) and where its data is (``dataset-path``). The
federation config comes from the server with every message. The client's algorithm state (e.g.
its local model and adapter) persists across rounds in Flower's ``Context.state``; training runs
the algorithm's own ``client_update`` with the simulator's per-(round, client) generator.

With ``privacy.mode`` set, the upload is clipped (and in local mode noised) before it leaves, as in
the simulator. With ``flower.secagg.enabled`` a training round is Flower's SecAgg+ protocol: the
mod answers its key-exchange stages, and the train handler answers the collect stage with the
update that the mod quantises and masks (:mod:`pfedlora.federation.flower.secagg`).
"""

from __future__ import annotations

import json
from functools import lru_cache

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pfedlora.algorithms.base import ClientData, FederationContext
from pfedlora.config import Config, build_config
from pfedlora.errors import UserError
from pfedlora.federation.flower import protocol
from pfedlora.federation.flower.payload import from_array_record, to_array_record
from pfedlora.federation.flower.secagg import fit_reply, is_secagg_message, read_fit_instructions, secaggplus_when_asked
from pfedlora.federation.privacy import update_of
from pfedlora.federation.simulation import Federation, client_generator
from pfedlora.metrics.accuracy import accuracy

app = ClientApp()


def node_config_for(config: Config, node_config: dict) -> tuple[Config, int]:
    """The config as this node sees it (its own architecture, data path) and its client id."""
    if protocol.NODE_PARTITION not in node_config:
        raise UserError(f"node config: {protocol.NODE_PARTITION!r} is missing; start the SuperNode with "
                        f"--node-config \"partition-id=K num-partitions=N\"")
    client_id = int(node_config[protocol.NODE_PARTITION])
    num = int(node_config.get(protocol.NODE_NUM_PARTITIONS, config.num_clients))
    if num != config.num_clients:
        raise UserError(f"node config: num-partitions={num} but the run has num_clients={config.num_clients}")
    if not 0 <= client_id < config.num_clients:
        raise UserError(f"node config: partition-id={client_id} is not in 0..{config.num_clients - 1}")
    updates: dict = {}
    model = node_config.get(protocol.NODE_MODEL)
    if model:
        models = [config.client_model(k) for k in range(config.num_clients)]
        models[client_id] = str(model)
        updates["client_models"] = models
    path = node_config.get(protocol.NODE_DATASET_PATH)
    if path:
        updates["dataset"] = {**config.dataset.model_dump(), "path": str(path)}
    if updates:
        config = build_config(config.to_dict() | updates)
    return config, client_id


@lru_cache(maxsize=2)
def _federation(config_text: str) -> Federation:
    # cached: a ClientApp process that serves several messages (simulation runtime) loads data once
    return Federation.build(protocol.config_from_text(config_text))


def _setup(msg: Message, context: Context, config_text: str | None = None) -> tuple[Federation, int, ClientData]:
    text = config_text if config_text is not None else str(msg.content[protocol.CONFIG]["config"])
    config, client_id = node_config_for(protocol.config_from_text(text), dict(context.node_config))
    federation = _federation(protocol.config_to_text(config))
    return federation, client_id, federation.clients[client_id]


def _load_state(federation: Federation, context: Context, client_id: int):
    if protocol.STATE_KEY in context.state:
        return from_array_record(context.state[protocol.STATE_KEY], federation.context.device)
    return federation.algorithm.init_client(federation.context, client_id)


@app.query()
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


@app.train(mods=[secaggplus_when_asked])
def train(msg: Message, context: Context) -> Message:
    if is_secagg_message(msg):  # the collect stage of a SecAgg+ round (the mod handles the others)
        return _train_secagg(msg, context)
    federation, client_id, data = _setup(msg, context)
    sent = msg.content[protocol.CONFIG]
    round_index = int(sent["round"])
    broadcast = from_array_record(msg.content[protocol.PAYLOAD], federation.context.device, as_float32=True)
    result, metrics = _client_round(federation, context, client_id, int(sent["client-id"]), round_index, broadcast, data)
    upload = federation.privacy.client_upload(result.upload, broadcast, round_index, client_id)
    metrics["weight"] = float(federation.privacy.weight(result.weight))
    record = MetricRecord(metrics)
    losses = [float(s.mean_loss) for s in result.stats if s.num_steps]
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
    """The update (clipped and noised under DP) and the weight, for secaggplus_mod to quantise and mask."""
    sent, broadcast = read_fit_instructions(msg)
    federation, client_id, data = _setup(msg, context, str(sent["config"]))
    round_index = int(sent["round"])
    broadcast = {name: tensor.to(federation.context.device) for name, tensor in broadcast.items()}
    result, metrics = _client_round(federation, context, client_id, int(sent["client-id"]), round_index, broadcast, data)
    privacy = federation.privacy
    update = (privacy.client_update(result.upload, broadcast, round_index, client_id) if privacy.enabled
              else update_of(result.upload, broadcast))
    # no training loss and no loss count: secaggplus_mod masks only the update and the weight, and anything
    # else in the reply would reach the server in plaintext, one value per client. The weight (1 under DP,
    # else the sample count the server already learnt from the query) also travels in the clear.
    return fit_reply(msg, update, int(round(privacy.weight(result.weight))), {})


@app.evaluate()
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
