"""Issue 35, items 3-5 on the Flower runtime, in-process over a fake Grid that runs the real
ClientApp handlers (and Flower's own secaggplus_mod for SecAgg+ rounds):

* under SecAgg+ with central DP every round is released, also when no client or a lone client is
  sampled (N = 10, q = 0.1), and the result is the private simulator's within SecAgg+'s quantisation;
* the server, not the client, sets each client's aggregation weight;
* an upload declaring a huge array, or a malformed record, rejects that client only;
* the server logs the privacy warnings the simulator writes to events.log, and leaves the
  sample-revealing columns out of metrics.csv and summary.json under central DP.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import tracemalloc

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402

from pfedlora.config import build_config  # noqa: E402
from pfedlora.federation import simulation  # noqa: E402
from pfedlora.federation.flower import client_app, protocol, secagg  # noqa: E402
from pfedlora.federation.flower.server_app import run_server  # noqa: E402
from pfedlora.federation.privacy import SAMPLE_REVEALING, Privacy  # noqa: E402

SECAGG_TOLERANCE = 5e-4  # as tests/federation/test_flower.py: SecAgg+'s quantisation over 2 rounds, 20x margin
SEEDED = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.3, "noise_source": "seeded_insecure"}


# outside a Flower process, messages need a ServerApp process's run/node identity (conftest.py)
pytestmark = pytest.mark.usefixtures("task_identity")


class FakeGrid:
    """Delivers each message to the ClientApp (with its mods, so SecAgg+ runs Flower's secaggplus_mod)
    of its node: node id = 100 + partition id. ``tamper(message type, client id, message, reply)`` may
    replace a reply."""

    def __init__(self, num_clients: int, tamper=None) -> None:
        self.contexts = {100 + k: Context(0, 100 + k, {"partition-id": k, "num-partitions": num_clients},
                                          RecordDict(), {}) for k in range(num_clients)}
        self.tamper = tamper

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            msg = copy.deepcopy(msg)  # as over the network: the workflow shares one record between messages
            node = msg.metadata.dst_node_id
            kind = msg.metadata.message_type
            if kind == MessageType.TRAIN:
                reply = client_app._secagg_floor(msg, self.contexts[node], client_app.train)
            else:
                reply = {MessageType.QUERY: client_app.query, MessageType.EVALUATE: client_app.evaluate}[kind](
                    msg, self.contexts[node])
            if self.tamper is not None:
                reply = self.tamper(kind, node - 100, msg, reply) or reply
            reply.metadata.__dict__["_src_node_id"] = node  # as the SuperLink stamps it
            replies.append(reply)
        return replies


def _config(**extra):
    document = {"num_clients": 3, "rounds": 2, "model_pool": ["cnn5"], "partition": {"kind": "dirichlet"},
                "train": {"batch_size": 32}, "eval_every": 2, "flower": {"connect_timeout": 1.0}}
    for key, value in extra.items():
        document[key] = {**document[key], **value} if isinstance(value, dict) and key in document else value
    return build_config(document)


def _simulated_state(config):
    federation = simulation.Federation.build(config)
    store = simulation.ClientStore(federation)
    torch.manual_seed(config.seed)
    state, broadcast = federation.algorithm.init_server(federation.context)
    for round_index in range(1, config.rounds + 1):
        state, broadcast, _ = simulation.run_round(federation, store, state, broadcast, round_index)
    return state


def test_secagg_with_central_dp_releases_every_round_with_n10_q01(tmp_path, monkeypatch):
    # seed 2 samples [6], [], [], [], [7, 9] in rounds 1-5: a lone client, nobody, then two
    config = _config(num_clients=10, fraction=0.1, rounds=5, eval_every=5, seed=2, privacy=SEEDED,
                     flower={"connect_timeout": 1.0, "secagg": {"enabled": True}})
    samples = [simulation.sample_clients(config, r) for r in range(1, 6)]
    assert [len(s) for s in samples] == [1, 0, 0, 0, 2]
    released: list[int] = []
    original = Privacy.release

    def spy(self, mean_update, round_index):
        released.append(round_index)
        return original(self, mean_update, round_index)

    monkeypatch.setattr(Privacy, "release", spy)
    summary = run_server(FakeGrid(10), config, tmp_path / "flower")
    assert released == [1, 2, 3, 4, 5]  # one release per round, none skipped
    log = (tmp_path / "flower" / "server.log").read_text()
    assert "keeping the previous global state" not in log
    assert "round 1: SecAgg+ summed clients [6] and padding client [0]" in log
    assert "round 2: 0 sampled clients reachable; releasing the noise alone" in log
    assert "round 5: SecAgg+ summed clients [7, 9]" in log
    # the same mechanism as the private simulator (seeded noise: the only way two runtimes add the same)
    monkeypatch.setattr(Privacy, "release", original)
    expected = _simulated_state(config)
    flower_state = torch.load(tmp_path / "flower" / "global_state.pt")
    worst = max(float((flower_state[n] - expected[n]).abs().max()) for n in expected)
    assert worst <= SECAGG_TOLERANCE, worst
    assert summary["privacy"]["mode"] == "central"


def test_under_secagg_the_client_masks_the_weight_the_server_sets(tmp_path, monkeypatch):
    config = _config(rounds=1, eval_every=1, flower={"connect_timeout": 1.0, "secagg": {"enabled": True}})
    masked: list[int] = []
    real_reply, real_round = client_app.fit_reply, secagg.secure_round

    def spy_reply(msg, update, weight, metrics):
        masked.append(weight)
        return real_reply(msg, update, weight, metrics)

    def server_sets(grid, config, config_text, round_index, broadcast, node_of, weights, log, pads=frozenset()):
        return real_round(grid, config, config_text, round_index, broadcast, node_of, {k: 7.0 for k in weights}, log,
                          pads)

    monkeypatch.setattr(client_app, "fit_reply", spy_reply)
    monkeypatch.setattr(secagg, "secure_round", server_sets)
    run_server(FakeGrid(3), config, tmp_path)
    assert masked == [7, 7, 7]  # not the clients' own sample counts


def _huge_array() -> Array:
    """An Array whose .npy header declares 10^13 float64 (80 TB) over 16 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**13,)})
    return Array(dtype="float64", shape=(10**13,), stype="numpy.ndarray", data=buffer.getvalue() + bytes(16))


def test_a_huge_or_malformed_upload_rejects_that_client_only(tmp_path):
    def tamper(kind, client_id, msg, reply):
        if kind == MessageType.EVALUATE and client_id == 2:  # an evaluation record without its accuracy
            return Message(RecordDict({protocol.METRICS: MetricRecord({"num-test": 5})}), reply_to=msg)
        if kind != MessageType.TRAIN:
            return None
        if client_id == 1:  # an upload that declares 10^13 float64
            record = reply.content[protocol.PAYLOAD]
            name = next(iter(record))
            record[name] = _huge_array()
        elif client_id == 2:  # a malformed record: no weight, no payload
            return Message(RecordDict({protocol.METRICS: MetricRecord({"num-losses": 0})}), reply_to=msg)
        return None

    grid = FakeGrid(3, tamper)
    config = _config(rounds=1, eval_every=1)
    tracemalloc.start()
    try:
        summary = run_server(grid, config, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    log = (tmp_path / "server.log").read_text()
    assert "round 1: client 1's reply rejected: payload entry" in log and "declares shape [10000000000000]" in log
    assert "round 1: client 2's reply rejected:" in log
    assert "round 1: aggregated 1 of 3 selected clients [0]" in log
    assert "evaluate 1: client 2's reply rejected: 'accuracy'" in log
    assert len(summary["client_accuracies"]) == 2  # the run went on: the two other clients evaluated
    assert peak < 300 * 2**20, f"{peak / 2**20:.0f} MiB traced"


def test_server_logs_privacy_warnings_and_leaves_out_sample_revealing_columns(tmp_path):
    config = _config(rounds=1, eval_every=1, fraction=0.67, privacy={**SEEDED, "delta": 0.5})
    summary = run_server(FakeGrid(3), config, tmp_path)
    log = (tmp_path / "server.log").read_text()
    assert "WARNING warning: privacy.delta 0.5 >= 1/num_clients" in log
    assert "this run is NOT private" in log
    with open(tmp_path / "metrics.csv", newline="") as handle:
        columns = next(csv.reader(handle))
    assert "epsilon" in columns and "mean_acc" in columns
    assert not set(columns) & {"train_loss", *SAMPLE_REVEALING}, columns
    assert not set(json.loads((tmp_path / "summary.json").read_text())) & set(SAMPLE_REVEALING)
    assert not set(summary) & set(SAMPLE_REVEALING)
