"""Real Flower deployments on 127.0.0.1: a SuperLink and 3 SuperNodes as subprocesses, `flwr run`.

Two runs (each a few minutes on a loaded 2-core machine, well under a minute idle):
* TLS (local CA from scripts/make_certs.sh), 2 rounds of pFedLoRA on digits with node-config
  architectures cnn5/cnn4/cnn3: the final global adapter, client accuracies and byte counts equal
  the in-process simulator's for the same config and seed.
* insecure, one SuperNode killed after round 1: the server aggregates the 2 replies of round 2
  (min_clients=2) exactly as the simulator would with clients {0, 1}, logs it and finishes.

Every process runs in its own session (process group) and is killed by group in the fixture's
teardown, at exit, and on SIGTERM/SIGINT (tests/federation/flower_cluster.py), so nothing outlives
a failing or killed test run; every wait has a deadline.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

pytest.importorskip("flwr")

from pfedlora.config import build_config  # noqa: E402
from pfedlora.federation import simulation  # noqa: E402
from pfedlora.federation.flower.payload import payload_bytes  # noqa: E402
from pfedlora.metrics.run_dir import read_metrics  # noqa: E402

from flower_cluster import MODELS, Cluster  # noqa: E402  (tests/federation/flower_cluster.py)

pytestmark = pytest.mark.flower

RUN_DEADLINE = 900.0  # seconds for one whole Flower run (a loaded shared machine is slow)


def _sim_config(**extra) -> object:
    return build_config({"num_clients": 3, "rounds": 2, "model_pool": ["cnn3", "cnn4", "cnn5"],
                         "client_models": MODELS, "partition": {"kind": "dirichlet"},
                         "train": {"batch_size": 32}, "eval_every": 2, **extra})


@pytest.fixture
def cluster_factory(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed for the TLS certificates)")
    made: list[Cluster] = []

    def make(tls: bool) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", tls)
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def _wait_for(cluster: Cluster, condition, what: str, deadline: float = RUN_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        for name, proc in cluster.procs.items():
            if name == "superlink" and proc.poll() is not None:
                raise AssertionError(f"the SuperLink exited while waiting for {what}\n{cluster.logs()}")
        if "ServerApp raised an exception" in (cluster.root / "superlink.log").read_text():
            raise AssertionError(f"the ServerApp failed while waiting for {what}\n{cluster.logs()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}\n{cluster.logs()}")
        time.sleep(1)


def _simulate(config, selections: dict[int, list[int]] | None = None, monkeypatch=None):
    """The in-process simulator's final global state and client accuracies."""
    if selections is not None:
        monkeypatch.setattr(simulation, "sample_clients", lambda cfg, r: selections[r])
    federation = simulation.Federation.build(config)
    store = simulation.ClientStore(federation)
    torch.manual_seed(config.seed)
    state, broadcast = federation.algorithm.init_server(federation.context)
    for round_index in range(1, config.rounds + 1):
        state, broadcast, _ = simulation.run_round(federation, store, state, broadcast, round_index)
    return state, simulation.evaluate_clients(federation, store, broadcast)


def _assert_same_state(flower_state, sim_state) -> None:
    assert list(flower_state) == list(sim_state)
    for name in sim_state:
        assert flower_state[name].dtype == sim_state[name].dtype
        torch.testing.assert_close(flower_state[name], sim_state[name], rtol=1e-5, atol=1e-6)


def test_tls_deployment_matches_the_in_process_simulator(cluster_factory, tmp_path):
    cluster = cluster_factory(tls=True)
    out = tmp_path / "run"
    cluster.flwr_run(out)
    _wait_for(cluster, lambda: (out / "summary.json").exists(), "summary.json")

    sim_state, sim_accuracies = _simulate(_sim_config())
    _assert_same_state(torch.load(out / "global_state.pt"), sim_state)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["client_accuracies"] == pytest.approx(sim_accuracies, abs=1e-6)
    assert set(summary["local_model_parameters"]) == set(MODELS)
    rows = read_metrics(out / "metrics.csv")
    assert [row["round"] for row in rows] == [2]
    # only the adapter crossed the network: 2 rounds x 3 clients x adapter bytes, each way
    adapter = payload_bytes(sim_state)
    assert rows[0]["up_bytes"] == rows[0]["down_bytes"] == 2 * 3 * adapter
    assert rows[0]["replied"] == 3
    assert (out / "partition.json").exists() and (out / "config.yaml").exists()
    assert "Starting insecure" not in (cluster.root / "supernode0.log").read_text()


def test_killed_supernode_round_aggregates_the_replies_that_arrived(cluster_factory, tmp_path, monkeypatch):
    cluster = cluster_factory(tls=False)
    out = tmp_path / "run"
    cluster.flwr_run(out, **{"min_clients": 2, "flower.round_timeout": 120.0})
    log = out / "server.log"
    _wait_for(cluster, lambda: log.exists() and "round 1: aggregated 3" in log.read_text(), "round 1")
    cluster.kill("supernode2")
    _wait_for(cluster, lambda: (out / "summary.json").exists(), "summary.json after the kill")

    text = log.read_text()
    assert "round 2: aggregated 2 of 3 selected clients [0, 1]" in text
    assert "client 2" in text and "round 2:" in text
    sim_state, sim_accuracies = _simulate(_sim_config(), {1: [0, 1, 2], 2: [0, 1]}, monkeypatch)
    _assert_same_state(torch.load(out / "global_state.pt"), sim_state)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["client_accuracies"] == pytest.approx(sim_accuracies[:2], abs=1e-6)
    row = read_metrics(out / "metrics.csv")[-1]
    assert row["replied"] == 2 and row["evaluated"] == 2
    assert row["up_bytes"] == 5 * payload_bytes(sim_state)
    assert cluster.procs["superlink"].poll() is None  # the server survived


# ---- SecAgg+ (Flower's secaggplus_mod + SecAggPlusWorkflow) -----------------------------------
# One SecAgg+ aggregation is off by at most n * step / sum(w_i / w_max) per coordinate (stochastic
# rounding, step = 2 * clipping_range / quantization_range = 16 / 2^22 = 3.8e-6; n = 3 clients:
# about 6e-6); round 2 trains from that slightly different adapter. Measured on these settings
# (2026-12-01): the final global adapter differs from the plaintext simulator's by at most 2.3e-5
# (all 3 clients) and 2.6e-5 (a node dropped in round 2); the rounding is random (unseeded in
# Flower), so the tolerance leaves a 20x margin.
SECAGG_TOLERANCE = 5e-4


def _assert_close_state(flower_state, sim_state, tolerance: float) -> float:
    assert list(flower_state) == list(sim_state)
    worst = max(float((flower_state[n] - sim_state[n]).abs().max()) for n in sim_state)
    assert worst <= tolerance, f"largest difference {worst:.3g} > {tolerance:g}"
    return worst


def test_secagg_deployment_matches_the_plaintext_simulator(cluster_factory, tmp_path):
    cluster = cluster_factory(tls=False)
    out = tmp_path / "run"
    cluster.flwr_run(out, **{"flower.secagg.enabled": True})
    _wait_for(cluster, lambda: (out / "summary.json").exists(), "summary.json")

    text = (out / "server.log").read_text()
    for stage in ("setup", "share_keys", "collect_masked_vectors", "unmask"):
        assert f"round 2: SecAgg+ stage {stage}: 3 nodes" in text
    assert "round 2: aggregated 3 of 3 selected clients [0, 1, 2] with SecAgg+" in text
    sim_state, sim_accuracies = _simulate(_sim_config())
    worst = _assert_close_state(torch.load(out / "global_state.pt"), sim_state, SECAGG_TOLERANCE)
    print(f"SecAgg+ vs plaintext: largest difference of the final global adapter {worst:.3g}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["secagg"]["enabled"] is True
    # an adapter off by ~2e-5 may flip the prediction of a test sample near the decision boundary, not
    # more: at most one test sample per client (was 5 points each, which a lost client update passed)
    test_counts = [c["num_test"] for c in json.loads((out / "partition.json").read_text())["clients"]]
    for flower_acc, sim_acc, count in zip(summary["client_accuracies"], sim_accuracies, test_counts, strict=True):
        assert abs(flower_acc - sim_acc) <= 100.0 / count + 1e-9
    row = read_metrics(out / "metrics.csv")[-1]
    # SecAgg+ sends more than the plaintext adapter: masked vectors (8-byte integers), keys, shares
    assert row["up_bytes"] > 2 * 3 * payload_bytes(sim_state)


def test_secagg_round_completes_when_a_supernode_drops_during_the_protocol(cluster_factory, tmp_path, monkeypatch):
    cluster = cluster_factory(tls=False)
    out = tmp_path / "run"
    # 5 local epochs: training (the collect stage) lasts long enough to kill a node in the middle of it
    cluster.flwr_run(out, **{"flower.secagg.enabled": True, "min_clients": 2, "flower.round_timeout": 60.0,
                             "train.local_epochs": 5})
    log = out / "server.log"
    _wait_for(cluster, lambda: log.exists() and "round 2: SecAgg+ stage collect_masked_vectors" in log.read_text(),
              "round 2's collect stage")
    cluster.kill("supernode2")  # it has shared its keys; it never sends its masked vector
    _wait_for(cluster, lambda: (out / "summary.json").exists(), "summary.json after the kill")

    text = log.read_text()
    assert "round 2: SecAgg+ stage unmask: 2 nodes" in text  # the survivors rebuild the dropped node's masks
    assert "round 2: aggregated 2 of 3 selected clients [0, 1] with SecAgg+" in text
    sim_state, _ = _simulate(_sim_config(train={"batch_size": 32, "local_epochs": 5}), {1: [0, 1, 2], 2: [0, 1]},
                             monkeypatch)
    worst = _assert_close_state(torch.load(out / "global_state.pt"), sim_state, SECAGG_TOLERANCE)
    print(f"SecAgg+ with a dropout vs plaintext: largest difference {worst:.3g}")
    assert read_metrics(out / "metrics.csv")[-1]["replied"] == 2


def test_private_deployment_matches_the_private_simulator(cluster_factory, tmp_path):
    """privacy.mode central on Flower (from a config file): clients clip, the server averages uniformly
    and adds the seeded noise, exactly as the simulator does; epsilon is written the same way."""
    import yaml

    from pfedlora.federation.privacy import epsilon

    # seeded noise (NOT private): the only way two runtimes can add the same noise
    privacy = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.3, "noise_source": "seeded_insecure"}
    config_file = tmp_path / "private.yaml"
    config_file.write_text(yaml.safe_dump({"privacy": privacy}))
    cluster = cluster_factory(tls=False)
    out = tmp_path / "run"
    cluster.flwr_run(out, **{"config-file": str(config_file)})
    _wait_for(cluster, lambda: (out / "summary.json").exists(), "summary.json")

    config = _sim_config(privacy=privacy)
    sim_state, sim_accuracies = _simulate(config)
    _assert_same_state(torch.load(out / "global_state.pt"), sim_state)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["client_accuracies"] == pytest.approx(sim_accuracies, abs=1e-6)
    assert summary["epsilon"] == pytest.approx(epsilon(config, 2))
    assert read_metrics(out / "metrics.csv")[-1]["epsilon"] == pytest.approx(epsilon(config, 2))


def test_secagg_with_central_dp_matches_the_private_simulator(cluster_factory, tmp_path):
    """SecAgg+ and DP together: clients clip, SecAgg+ sums with weight 1 each, the server adds the
    seeded noise to the unmasked mean; equal to the private simulator within the quantisation error."""
    import yaml

    # seeded noise (NOT private): the only way two runtimes can add the same noise
    privacy = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.3, "noise_source": "seeded_insecure"}
    config_file = tmp_path / "private.yaml"
    config_file.write_text(yaml.safe_dump({"privacy": privacy}))
    cluster = cluster_factory(tls=False)
    out = tmp_path / "run"
    cluster.flwr_run(out, **{"config-file": str(config_file), "flower.secagg.enabled": True})
    _wait_for(cluster, lambda: (out / "summary.json").exists(), "summary.json")

    assert "round 2: aggregated 3 of 3 selected clients [0, 1, 2] with SecAgg+" in (out / "server.log").read_text()
    sim_state, _ = _simulate(_sim_config(privacy=privacy))
    _assert_close_state(torch.load(out / "global_state.pt"), sim_state, SECAGG_TOLERANCE)
    assert json.loads((out / "summary.json").read_text())["privacy"]["mode"] == "central"
