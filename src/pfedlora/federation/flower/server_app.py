"""The Flower ServerApp: the simulator's round loop over real SuperNodes (Flower Message API).

Per round it selects clients with the simulator's seeded ``sample_clients`` (by partition id; a
query message maps each SuperNode to its partition), sends them the algorithm's broadcast as an
ArrayRecord, aggregates the uploads that arrived with the algorithm's ``aggregate``, and asks
every client to evaluate its personalized model. Only payloads cross the network; the bytes are
counted from the arrays actually sent and received. A round with fewer than
``min_clients`` valid updates keeps the previous global state (under central DP every round is
released, as in the simulator). A malformed reply (an array header that does not match its data, a
record without its keys) rejects that client's update or evaluation, never the run. The run directory is the
simulator's (config.yaml, partition.json, metrics.csv, summary.json) plus ``global_state.pt``
(the final server state) and ``server.log``.

Privacy (:mod:`pfedlora.federation.privacy`): under ``privacy.mode`` the server aggregates with
uniform weights (its own: the clients' reported weights are not read), clips again and adds the
noise (central), logs the privacy warnings and writes ``epsilon`` like the simulator, and leaves
out of metrics.csv and summary.json what the mechanism does not cover (``Privacy.released``). With ``flower.secagg.enabled`` every training round is Flower's SecAgg+ protocol
(:mod:`pfedlora.federation.flower.secagg`): the server learns only the weighted mean update of the
clients that finished, so it cannot validate single uploads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from pfedlora.algorithms import get_algorithm
from pfedlora.algorithms.base import FederationContext, Payload, Upload
from pfedlora.config import Config
from pfedlora.federation.flower import protocol
from pfedlora.federation.flower.payload import from_array_record, record_bytes, to_array_record
from pfedlora.federation.preflight import check_run
from pfedlora.data.cache import one_line
from pfedlora.errors import UserError
from pfedlora.federation.privacy import Privacy, apply_mean, privacy_warnings
from pfedlora.federation.simulation import sample_clients, validator_for
from pfedlora.metrics.accuracy import diagnostics_summary, mean_metrics, run_summary, summarize
from pfedlora.metrics.run_dir import MetricsWriter, prepare_run_dir, write_json, write_yaml

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config, out_dir, overwrite = protocol.config_from_run_config(dict(context.run_config))
    run_server(grid, config, out_dir, overwrite=overwrite)


class RunLog:
    """Logs to Flower's logger and to ``server.log`` in the run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str, level: int = logging.INFO) -> None:
        flwr_log(level, "pfedlora: %s", message)
        with self.path.open("a") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {logging.getLevelName(level)} {message}\n")


class NodeMap:
    """Which SuperNode holds which client (partition id), learnt by query messages."""

    def __init__(self) -> None:
        self.node_of: dict[int, int] = {}
        self.info: dict[int, dict[str, Any]] = {}
        self.asked: set[int] = set()
        self.errors: list[str] = []

    def refresh(self, grid: Grid, config_text: str, timeout: float, log: RunLog) -> None:
        """Query SuperNodes not asked yet; a reconnected node (new id) takes over its partition."""
        new = sorted(set(grid.get_node_ids()) - self.asked)
        if not new:
            return
        self.asked.update(new)
        messages = [Message(RecordDict({protocol.CONFIG: ConfigRecord({"config": config_text})}),
                            dst_node_id=node, message_type=MessageType.QUERY) for node in new]
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(f"node {node} did not describe itself: {reply.error.reason}", logging.WARNING)
                self.errors.append(str(reply.error.reason))
                continue
            try:
                info = dict(reply.content[protocol.INFO])
                client_id = int(info["partition-id"])
                for key in ("num-train", "model", "input-shape", "num-classes", "partition"):
                    info[key]  # noqa: B018 - a malformed description fails here, not mid-run
            except (KeyError, TypeError, ValueError) as exc:
                log(f"node {node} sent a malformed description ({one_line(exc)}); left out", logging.WARNING)
                self.errors.append(one_line(exc))
                continue
            if client_id in self.node_of and self.node_of[client_id] != node:
                log(f"node {node} replaces node {self.node_of[client_id]} for client {client_id}", logging.WARNING)
            self.node_of[client_id] = node
            self.info[client_id] = info
            log(f"node {node} holds client {client_id} ({info['model']}, {info['num-train']} training samples)")

    @property
    def client_of(self) -> dict[int, int]:
        return {node: client for client, node in self.node_of.items()}


def wait_for_nodes(grid: Grid, wanted: int, timeout: float, log: RunLog) -> None:
    deadline = time.monotonic() + timeout
    while True:
        count = len(list(grid.get_node_ids()))
        if count >= wanted:
            log(f"{count} SuperNodes connected")
            return
        if time.monotonic() > deadline:
            log(f"only {count} of {wanted} SuperNodes connected after {timeout:.0f} s; going on", logging.WARNING)
            return
        time.sleep(0.5)


def _message(payload: Payload, config_text: str, round_index: int, client_id: int, node: int,
             message_type: str, dtype: str) -> Message:
    content = RecordDict({
        protocol.PAYLOAD: to_array_record(payload, dtype),
        protocol.CONFIG: ConfigRecord({"config": config_text, "round": round_index, "client-id": client_id}),
    })
    return Message(content, dst_node_id=node, message_type=message_type, group_id=f"{message_type}-{round_index}")


def _replies(grid: Grid, messages: list[Message], timeout: float, client_of: dict[int, int],
             what: str, log: RunLog) -> Iterable[tuple[int, Message]]:
    """(client id, reply) for each reply without error; errors and silence are logged."""
    sent = {m.metadata.dst_node_id: client_of[m.metadata.dst_node_id] for m in messages}
    answered: set[int] = set()
    started = time.monotonic()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if node not in sent:
            continue
        answered.add(node)
        if reply.has_error():
            log(f"{what}: client {sent[node]} (node {node}) failed: {reply.error.reason}", logging.WARNING)
            continue
        yield sent[node], reply
    for node in sorted(set(sent) - answered):
        # silence: the timeout passed, or the SuperLink dropped the message (node gone)
        log(f"{what}: no reply from client {sent[node]} (node {node}) after {time.monotonic() - started:.0f} s "
            f"(round_timeout {timeout:.0f} s)", logging.WARNING)


def run_server(grid: Grid, config: Config, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """The whole federation over ``grid``; writes the run directory and returns the summary."""
    check_run(config)  # before the run directory is made
    out = prepare_run_dir(out_dir, overwrite=overwrite)
    for name in ("server.log", "global_state.pt"):
        (out / name).unlink(missing_ok=True)
    log = RunLog(out / "server.log")
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    algorithm = get_algorithm(config.algorithm)
    config_text = protocol.config_to_text(config)
    timeout = config.flower.round_timeout
    write_yaml(out / "config.yaml", config.to_dict())
    log(f"{config.algorithm} on {config.dataset.name}: {config.num_clients} clients, {config.rounds} rounds -> {out}")
    for line in privacy_warnings(config):  # as the simulator's events.log
        log(f"warning: {line}", logging.WARNING)

    wait_for_nodes(grid, config.num_clients, config.flower.connect_timeout, log)
    nodes = NodeMap()
    nodes.refresh(grid, config_text, timeout, log)
    if not nodes.info:
        reason = f" (first error: {nodes.errors[0]})" if nodes.errors else ""
        raise RuntimeError(f"no SuperNode described itself; cannot start the federation{reason}")
    first = next(iter(nodes.info.values()))
    # the server never loads data: shapes come from the clients
    ctx = FederationContext(config, tuple(int(v) for v in first["input-shape"]), int(first["num-classes"]),
                            torch.device("cpu"))
    write_json(out / "partition.json", {
        "num_clients": config.num_clients, "num_classes": ctx.num_classes,
        "clients": [json.loads(nodes.info[k]["partition"]) for k in sorted(nodes.info)],
    })
    counts: dict[str, Any] = {"local_model_parameters": {
        str(info["model"]): int(info["model-parameters"]) for info in nodes.info.values()}}
    counts.update(algorithm.describe(ctx))

    server_state, broadcast = algorithm.init_server(ctx)
    validator = validator_for(config)
    privacy = Privacy.from_config(config)
    secagg = config.flower.secagg.enabled
    if secagg:
        log("SecAgg+: the server sees only the sum of the masked updates; single uploads cannot be validated")
    metrics = MetricsWriter(out / "metrics.csv")
    history: list[dict[str, Any]] = []
    client_accuracies: list[float] = []
    diagnostics: dict[str, float] = {}  # the algorithm's evaluation_metrics, mean over the evaluated clients
    up_bytes = down_bytes = 0
    kept_rounds: list[int] = []
    for round_index in range(1, config.rounds + 1):
        nodes.refresh(grid, config_text, timeout, log)
        selected = sample_clients(config, round_index)
        # a client without training samples has nothing to train on or report
        empty = [k for k in selected if k in nodes.info and int(nodes.info[k]["num-train"]) == 0]
        if empty:
            log(f"round {round_index}: selected clients {empty} have no training samples; skipped")
            selected = [k for k in selected if k not in empty]
        absent = [k for k in selected if k not in nodes.node_of]
        if absent:
            log(f"round {round_index}: selected clients {absent} have no SuperNode", logging.WARNING)
        losses: list[float] = []
        reachable = {k: nodes.node_of[k] for k in selected if k in nodes.node_of}
        if secagg:
            aggregate, aggregated, round_up, round_down = _secure_round(
                grid, config, config_text, round_index, ctx, algorithm, privacy, server_state, broadcast, reachable,
                {k: float(nodes.info[k]["num-train"]) for k in reachable}, nodes.node_of, log)
        else:
            aggregate, aggregated, round_up, round_down = _plain_round(
                grid, config, config_text, round_index, ctx, algorithm, privacy, validator, server_state, broadcast,
                reachable, nodes.client_of, losses, log)
        up_bytes, down_bytes = up_bytes + round_up, down_bytes + round_down
        if aggregate is not None:
            server_state, broadcast = aggregate
            log(f"round {round_index}: aggregated {len(aggregated)} of {len(selected)} selected clients {aggregated}"
                + (" with SecAgg+" if secagg else ""))
        else:
            kept_rounds.append(round_index)
            log(f"round {round_index}: only {len(aggregated)} of {len(selected)} selected clients sent a valid update "
                f"(min_clients={config.min_clients}); keeping the previous global state", logging.WARNING)

        if round_index % config.eval_every == 0 or round_index == config.rounds:
            clients = sorted(nodes.node_of)
            eval_messages = [_message(broadcast, config_text, round_index, k, nodes.node_of[k], MessageType.EVALUATE,
                                      config.payload_dtype)
                             for k in clients]
            replies, results = {}, {}
            for k, reply in _replies(grid, eval_messages, timeout, nodes.client_of, f"evaluate {round_index}", log):
                try:
                    replies[k] = reply.content[protocol.METRICS]
                    results[k] = _accuracy(replies[k])
                    _diagnostics(replies[k])
                except (UserError, KeyError, TypeError, ValueError) as exc:  # a malformed record: this client only
                    replies.pop(k, None)
                    results.pop(k, None)
                    log(f"evaluate {round_index}: client {k}'s reply rejected: {one_line(exc)}", logging.WARNING)
            if not results:
                log(f"evaluate {round_index}: no client replied; no metrics row", logging.WARNING)
                continue
            client_accuracies = [results[k] for k in sorted(results)]
            diagnostics = mean_metrics([_diagnostics(replies[k]) for k in sorted(replies) if results[k] is not None])
            row = {"round": round_index, **summarize(client_accuracies),
                   "train_loss": float(np.mean(losses)) if losses else math.nan,
                   "wall_s": time.perf_counter() - started,
                   "up_bytes": up_bytes, "down_bytes": down_bytes,
                   "replied": len(aggregated), "evaluated": len(results),
                   **algorithm.server_metrics(ctx, server_state), **diagnostics}
            if privacy.enabled:  # epsilon spent so far, at delta
                row["epsilon"] = privacy.epsilon(config, round_index)
            metrics.write(privacy.released(row))  # under DP: without what the mechanism does not cover
            history.append(row)
            up_bytes = down_bytes = 0
            log(f"round {round_index}: mean accuracy {row['mean_acc']:.2f}% over {len(results)} clients")

    torch.save(server_state, out / "global_state.pt")
    if not history:
        raise RuntimeError("no round was evaluated; see server.log")
    summary = run_summary(config, history, client_accuracies, time.perf_counter() - started) | counts | {
        "runtime": "flower",
        "total_up_bytes": int(sum(r["up_bytes"] for r in history)),
        "total_down_bytes": int(sum(r["down_bytes"] for r in history)),
        "rounds_without_quorum": kept_rounds,
    } | diagnostics_summary(diagnostics) | privacy.summary(config, config.rounds) | ({"secagg": config.flower.secagg.model_dump()} if secagg else {})
    summary = privacy.released(summary)  # under DP: without what the mechanism does not cover
    write_json(out / "summary.json", summary)
    log(f"done: final accuracy {summary['final_accuracy']:.2f}%")
    return summary


def _plain_round(grid: Grid, config: Config, config_text: str, round_index: int, ctx: FederationContext,
                 algorithm, privacy: Privacy, validator, server_state, broadcast: Payload, node_of: dict[int, int],
                 client_of: dict[int, int], losses: list[float], log: RunLog):
    """One training round with plaintext uploads: ((server state, broadcast) or None, ids of the valid
    uploads, up bytes, down bytes)."""
    messages = [_message(broadcast, config_text, round_index, k, node, MessageType.TRAIN, config.payload_dtype)
                for k, node in node_of.items()]
    down = sum(record_bytes(m.content[protocol.PAYLOAD]) for m in messages)
    up = 0
    uploads: list[Upload] = []
    for client_id, reply in _replies(grid, messages, config.flower.round_timeout, client_of, f"round {round_index}", log):
        try:
            upload, weight, client_losses, size = _read_upload(reply, privacy)
        except (UserError, KeyError, TypeError, ValueError) as exc:  # a malformed reply costs this client only
            log(f"round {round_index}: client {client_id}'s reply rejected: {one_line(exc)}", logging.WARNING)
            continue
        up += size
        uploads.append(Upload(client_id, upload, weight))
        losses.extend(client_losses)
    uploads.sort(key=lambda u: u.client_id)  # the simulator's order
    report = validator.validate(uploads, algorithm.expected_upload(ctx, broadcast), broadcast,
                                algorithm.upload_check(ctx, broadcast))
    for rejection in report.rejected:
        log(f"round {round_index}: {rejection}", logging.WARNING)
    uploads = report.accepted
    ids = [u.client_id for u in uploads]
    # central DP releases every round (see pfedlora.federation.simulation.run_round)
    if len(uploads) < config.min_clients and not privacy.central:
        return None, ids, up, down
    if privacy.enabled:
        return privacy.aggregate(algorithm, ctx, server_state, broadcast, uploads, round_index), ids, up, down
    return algorithm.aggregate(ctx, server_state, uploads), ids, up, down


def _read_upload(reply: Message, privacy: Privacy) -> tuple[Payload, float, list[float], int]:
    """(payload, aggregation weight, training losses, bytes) of one training reply; raises UserError (or
    KeyError, TypeError, ValueError) for a malformed one. Under DP the weight is the server's (1), never
    the one a client reports, and no loss is read (clients under DP send none)."""
    record = reply.content[protocol.PAYLOAD]
    payload = from_array_record(record, as_float32=True)  # checks every header against its data first
    size = record_bytes(record)
    if privacy.enabled:
        return payload, 1.0, [], size
    reported = reply.content[protocol.METRICS]
    weight = float(reported["weight"])
    if not math.isfinite(weight) or weight < 0:
        raise UserError(f"weight {weight} is not a finite number >= 0")
    losses = [float(v) for v in reported["train-losses"]] if int(reported["num-losses"]) else []
    return payload, weight, losses, size


def _secure_round(grid: Grid, config: Config, config_text: str, round_index: int, ctx: FederationContext,
                  algorithm, privacy: Privacy, server_state, broadcast: Payload, node_of: dict[int, int],
                  sample_counts: dict[int, float], all_nodes: dict[int, int], log: RunLog):
    """One training round through SecAgg+: ((server state, broadcast) or None, ids of the clients summed,
    up bytes, down bytes). ``node_of``: the round's reachable selected clients; ``all_nodes``: every
    client's node (a central-DP round pads a lone client with one of them).

    Under central DP the round is always released, like the simulator's: noise alone when nobody was
    sampled, reachable or summed (skipping it would leave the broadcast unchanged, which the next
    evaluation reveals and which is not the mechanism the accountant charges). SecAgg+ needs 2 nodes, so a
    lone sampled client is summed with a non-sampled node that adds a zero update (a sum of one reveals
    that update to the server whichever way it travels; the lone client's upload stays masked)."""
    from pfedlora.federation.flower.secagg import SecureRound, secure_round

    central = privacy.central
    pads: dict[int, int] = {}
    if central and len(node_of) == 1:
        spare = sorted(k for k in all_nodes if k not in node_of)
        if spare:
            pads = {spare[0]: all_nodes[spare[0]]}
    if len(node_of) + len(pads) < 2:
        if not central:
            log(f"round {round_index}: SecAgg+ needs at least 2 clients, {len(node_of)} reachable", logging.WARNING)
            return None, [], 0, 0
        log(f"round {round_index}: {len(node_of)} sampled clients reachable; releasing the noise alone")
        return _release(algorithm, ctx, privacy, server_state, broadcast, None, 0, round_index), [], 0, 0
    # the server sets every weight (1 under DP, else the sample count its query learnt); clients use it
    weights = {k: privacy.weight(sample_counts.get(k, 1.0)) for k in node_of} | {k: 1.0 for k in pads}
    try:
        result = secure_round(grid, config, config_text, round_index, broadcast, node_of | pads, weights, log,
                              pads=set(pads))
    except (MemoryError, UserError, KeyError, TypeError, ValueError) as exc:
        # a malformed masked vector or share (read by Flower's workflow): the round halts, the run goes on
        log(f"round {round_index}: SecAgg+ failed ({one_line(exc)}); treated as halted", logging.WARNING)
        result = SecureRound(None, [])
    summed = [k for k in result.contributors if k not in pads]
    log(f"round {round_index}: SecAgg+ summed clients {summed}" + (f" and padding client {sorted(pads)}" if pads else "")
        + f" in {result.seconds:.2f} s ({result.up_bytes:,} bytes up, {result.down_bytes:,} down)")
    # under SecAgg+ clients report no training loss: it would reach the server in plaintext, one per client
    if central:
        if result.mean_update is None:
            log(f"round {round_index}: SecAgg+ halted; releasing the noise alone", logging.WARNING)
        # every contributor (pads too) has weight 1: the weighted mean times their number is the sum
        return (_release(algorithm, ctx, privacy, server_state, broadcast, result.mean_update,
                         len(result.contributors), round_index), summed, result.up_bytes, result.down_bytes)
    if result.mean_update is None or len(summed) < config.min_clients:
        return None, summed, result.up_bytes, result.down_bytes
    mean = privacy.release(privacy.mean_from_secure_sum(result.mean_update, len(result.contributors)), round_index)
    return (apply_mean(algorithm, ctx, server_state, broadcast, mean), summed,
            result.up_bytes, result.down_bytes)


def _release(algorithm, ctx: FederationContext, privacy: Privacy, server_state, broadcast: Payload,
             weighted_mean: dict[str, torch.Tensor] | None, contributors: int, round_index: int):
    """Central DP's release of a SecAgg+ round: (sum over the fixed m) + noise; no sum: the noise alone."""
    if weighted_mean is None:
        mean = privacy.mean_update([], broadcast)  # zeros shaped like the broadcast's floating tensors
    else:
        mean = privacy.mean_from_secure_sum(weighted_mean, contributors)
    return apply_mean(algorithm, ctx, server_state, broadcast, privacy.release(mean, round_index))


def _diagnostics(metrics: Any) -> dict[str, float]:
    """A client's reported ``evaluation_metrics`` (the ``diag.`` keys of its evaluation reply)."""
    prefix = protocol.DIAGNOSTIC_PREFIX
    return {key[len(prefix):]: float(value) for key, value in metrics.items() if key.startswith(prefix)}


def _accuracy(metrics: Any) -> float | None:
    """A client's reported accuracy; None when its test split is empty (left out of the mean)."""
    if "num-test" in metrics and int(metrics["num-test"]) == 0:
        return None
    return float(metrics["accuracy"])
