"""The ServerApp's round loop and the ClientApp's handlers in-process, over a fake Flower Grid.

A fast check of the failure paths that real deployments (tests/federation/test_flower.py) can only
reach by killing processes: error replies and silent clients are dropped, a round with enough
replies aggregates them exactly as the simulator would, and one with too few keeps the state.
"""

import torch
import pytest

pytest.importorskip("flwr")

from flwr.app import Context, Error, Message, MessageType, RecordDict  # noqa: E402

from pfedlora.config import build_config  # noqa: E402
from pfedlora.federation import simulation  # noqa: E402
from pfedlora.federation.flower import client_app  # noqa: E402
from pfedlora.federation.flower.server_app import run_server  # noqa: E402

# outside a Flower process, messages need a ServerApp process's run/node identity (conftest.py)
pytestmark = pytest.mark.usefixtures("task_identity")


# one small architecture: this test is about the loop, not heterogeneity (test_flower.py covers it)
CONFIG = {"num_clients": 3, "rounds": 2, "model_pool": ["cnn5"], "partition": {"kind": "dirichlet"},
          "train": {"batch_size": 32}, "eval_every": 2, "flower": {"connect_timeout": 1.0}}


class FakeGrid:
    """Delivers each message to the ClientApp handler of its node (node id = 100 + partition id)."""

    def __init__(self, failing: dict[tuple[str, int], str] | None = None) -> None:
        self.contexts = {100 + k: Context(0, 100 + k, {"partition-id": k, "num-partitions": 3}, RecordDict(), {})
                         for k in range(3)}
        self.failing = failing or {}  # (message type, partition id) -> "error" | "silent"
        self.sent: list[tuple[str, int]] = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        handlers = {MessageType.QUERY: client_app.query, MessageType.TRAIN: client_app.train,
                    MessageType.EVALUATE: client_app.evaluate}
        for msg in messages:
            node = msg.metadata.dst_node_id
            kind = msg.metadata.message_type
            self.sent.append((kind, node - 100))
            failure = self.failing.get((kind, node - 100))
            if failure == "silent":
                continue
            if failure == "error":
                reply = Message(Error(code=0, reason="simulated crash"), reply_to=msg)
            else:
                reply = handlers[kind](msg, self.contexts[node])
            reply.metadata.__dict__["_src_node_id"] = node  # as the SuperLink stamps it
            replies.append(reply)
        return replies


def _simulated(config, selections=None, monkeypatch=None):
    if selections is not None:
        monkeypatch.setattr(simulation, "sample_clients", lambda cfg, r: selections[r])
    federation = simulation.Federation.build(config)
    store = simulation.ClientStore(federation)
    torch.manual_seed(config.seed)
    state, broadcast = federation.algorithm.init_server(federation.context)
    for round_index in range(1, config.rounds + 1):
        state, broadcast, _ = simulation.run_round(federation, store, state, broadcast, round_index)
    return state


def _close(a, b):
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_failed_and_silent_clients_are_dropped_and_no_quorum_keeps_the_state(tmp_path, monkeypatch):
    config = build_config({**CONFIG, "min_clients": 2, "flower": {"connect_timeout": 1.0}})
    # round 1: client 2 errors (2 of 3 replies, aggregated); round 2: only client 0 replies (kept)
    grid = FakeGrid({(MessageType.TRAIN, 2): "error", (MessageType.EVALUATE, 2): "error",
                     (MessageType.TRAIN, 1): "silent"})
    original = grid.send_and_receive
    round_of_call = {"train": 0}

    def send(messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            round_of_call["train"] += 1
            if round_of_call["train"] == 1:  # client 1 is silent only in round 2
                grid.failing.pop((MessageType.TRAIN, 1))
                replies = original(messages, timeout=timeout)
                grid.failing[(MessageType.TRAIN, 1)] = "silent"
                return replies
        return original(messages, timeout=timeout)

    grid.send_and_receive = send
    summary = run_server(grid, config, tmp_path)
    assert summary["rounds_without_quorum"] == [2]
    log = (tmp_path / "server.log").read_text()
    assert "round 1: aggregated 2 of 3 selected clients [0, 1]" in log
    assert "client 2" in log and "simulated crash" in log
    assert "round 2: only 1 of 3 selected clients sent a valid update (min_clients=2); keeping the previous global state" in log
    assert "no reply from client 1" in log
    # the final state is round 1's aggregate of clients 0 and 1
    expected = _simulated(build_config({**CONFIG, "rounds": 1}), {1: [0, 1]}, monkeypatch)
    _close(torch.load(tmp_path / "global_state.pt"), expected)
    assert len(summary["client_accuracies"]) == 2


def test_the_algorithms_evaluation_metrics_reach_the_metrics_row_as_in_the_simulator(tmp_path):
    import csv

    config = build_config({**CONFIG, "adapter": {"combine": "convex", "mu": 0.5}})  # pFedLoRA: an active adapter
    summary = run_server(FakeGrid(), config, tmp_path / "flower")
    simulated = simulation.run(config, tmp_path / "sim", log=lambda _: None)
    rows = [list(csv.DictReader(open(d / "metrics.csv", newline=""))) for d in (tmp_path / "flower", tmp_path / "sim")]
    for key in ("adapter_share", "adapter_flips"):
        assert float(rows[0][-1][key]) == pytest.approx(float(rows[1][-1][key]), rel=1e-4, abs=1e-4)
        assert summary[f"final_{key}"] == pytest.approx(simulated[f"final_{key}"], rel=1e-4, abs=1e-4)
    assert summary["final_adapter_share"] > 0
