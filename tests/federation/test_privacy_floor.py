"""Issue 35, item 2: a Flower node keeps its own privacy floor and data paths.

The rules (pfedlora.federation.flower.floor) are checked in-process first; then one real Flower
cluster (a SuperLink and 3 SuperNodes whose node configs set a floor) serves five `flwr run`s: four
servers that each ask for less in one respect (privacy off, seeded noise, no SecAgg+, another data
path) are refused by every node with one line in its log and nothing uploaded, and a server that
meets the floor runs to the end.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import yaml

pytest.importorskip("flwr")

from pfedlora.config import build_config  # noqa: E402
from pfedlora.errors import UserError  # noqa: E402
from pfedlora.federation.flower.client_app import node_config_for  # noqa: E402
from pfedlora.federation.flower.floor import FloorRefusal, check_floor  # noqa: E402

CENTRAL = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.3}
FLOOR = {"partition-id": 0, "num-partitions": 3, "privacy-mode": "central", "min-noise-multiplier": 0.2,
         "max-clip-norm": 1.0, "require-secagg": True}


def _config(privacy=None, secagg=True, **dataset):
    return build_config({"num_clients": 3, "privacy": privacy or {"mode": "off"},
                         "flower": {"secagg": {"enabled": secagg}}, "dataset": {"name": "digits", **dataset}})


@pytest.mark.parametrize("privacy,secagg,dataset,message", [
    ({"mode": "off"}, True, {}, "privacy.mode off; this node's floor (privacy-mode) accepts central or local"),
    ({**CENTRAL, "noise_source": "seeded_insecure"}, True, {}, "noise_source seeded_insecure"),
    (CENTRAL, False, {}, "flower.secagg.enabled false; this node uploads only through SecAgg+"),
    ({**CENTRAL, "noise_multiplier": 0.1}, True, {}, "noise multiplier 0.1; this node's floor (min-noise-multiplier)"),
    ({**CENTRAL, "clip_norm": 2.0}, True, {}, "clip_norm 2; this node's floor (max-clip-norm) is 1"),
    (CENTRAL, True, {"path": "/etc"}, "dataset.path '/etc'; this node reads only its own (dataset-path=None)"),
    (CENTRAL, True, {"cache_dir": "/tmp/elsewhere"}, "dataset.cache_dir '/tmp/elsewhere'"),
    (CENTRAL, True, {"allow_outside_paths": True}, "dataset.allow_outside_paths True"),
    (CENTRAL, True, {"tokenizer": "/home"}, "dataset.tokenizer '/home'"),
])
def test_a_server_config_below_the_floor_is_refused(privacy, secagg, dataset, message):
    with pytest.raises(FloorRefusal, match=re.escape(message)):
        node_config_for(_config(privacy, secagg, **dataset), FLOOR)


def test_a_config_at_or_above_the_floor_is_accepted_and_the_nodes_paths_are_used(tmp_path):
    node = {**FLOOR, "dataset-path": str(tmp_path / "data"), "cache-dir": str(tmp_path / "cache")}
    for privacy in (CENTRAL, {**CENTRAL, "mode": "local"}, {**CENTRAL, "noise_multiplier": 5.0, "clip_norm": 1.0}):
        config, client_id = node_config_for(_config(privacy), node)
        assert client_id == 0 and config.privacy.mode == privacy["mode"]
        assert (config.dataset.path, config.dataset.cache_dir) == (str(tmp_path / "data"), str(tmp_path / "cache"))
    # the server may name the node's own path (or leave it unset)
    config, _ = node_config_for(_config(CENTRAL, path=str(tmp_path / "data")), node)
    assert config.dataset.path == str(tmp_path / "data")
    # a plaintext training message is refused even when the config claims SecAgg+
    with pytest.raises(FloorRefusal, match="a plaintext training round"):
        check_floor(_config(CENTRAL), FLOOR, plaintext_training=True)


def test_a_local_floor_refuses_central_and_no_floor_accepts_anything():
    with pytest.raises(FloorRefusal, match="accepts local"):
        node_config_for(_config(CENTRAL), {**FLOOR, "privacy-mode": "local"})
    seeded = {**CENTRAL, "noise_source": "seeded_insecure"}
    node_config_for(_config(seeded, secagg=False), {"partition-id": 0, "num-partitions": 3})
    # an explicit secure-noise false lets a test floor take seeded noise
    node_config_for(_config(seeded), {**FLOOR, "secure-noise": False})


@pytest.mark.parametrize("key,value,message", [
    ("privacy-mode", "strong", "accepted: off, central or local"),
    ("min-noise-multiplier", "lots", "is not a number"),
    ("max-clip-norm", -1, "accepted: a number > 0"),
    ("require-secagg", "maybe", "is not a boolean"),
])
def test_a_malformed_floor_is_a_one_line_user_error(key, value, message):
    with pytest.raises(UserError, match=message):
        node_config_for(_config(CENTRAL), {**FLOOR, key: value})


# ---- a real cluster -------------------------------------------------------------------------

RUN_DEADLINE = 900.0


def _node_config_text(k: int) -> str:
    return (f'partition-id={k} num-partitions=3 model="cnn5" privacy-mode="central" min-noise-multiplier=0.2 '
            f'max-clip-norm=1.0 require-secagg=true')


def _wait(cluster, condition, what: str) -> None:
    end = time.monotonic() + RUN_DEADLINE
    while not condition():
        if cluster.procs["superlink"].poll() is not None:
            raise AssertionError(f"the SuperLink exited while waiting for {what}\n{cluster.logs()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")
        time.sleep(1)


@pytest.mark.flower
@pytest.mark.slow
def test_nodes_refuse_servers_below_their_floor_on_a_real_cluster(tmp_path):
    from flower_cluster import BIN, Cluster, free_port  # tests/federation/flower_cluster.py

    if shutil.which("openssl") is None:  # the helper's TLS path is not used; keep the same skip as test_flower
        pytest.skip("openssl is not installed")
    cluster = Cluster(tmp_path / "cluster", tls=False)
    try:
        cluster.start_superlink()
        for k in range(3):
            cluster._start(f"supernode{k}", [
                str(BIN / "flower-supernode"), *cluster.node_security,
                "--superlink", f"127.0.0.1:{cluster.port}", "--port", str(free_port()), "--max-wait-time", "120",
                "--node-config", _node_config_text(k)])
        secure = {"privacy": CENTRAL, "dataset": {"name": "digits"}}
        attempts = {  # what each server asks for, and what the nodes' floor says about it
            "off": ({"privacy": {"mode": "off"}}, True, "the server asks privacy.mode off"),
            "seeded": ({"privacy": {**CENTRAL, "noise_source": "seeded_insecure"}}, True,
                       "the server asks privacy.noise_source seeded_insecure"),
            "plain": (secure, False, "the server asks flower.secagg.enabled false"),
            "path": ({**secure, "dataset": {"name": "digits", "path": str(tmp_path / "elsewhere")}}, True,
                     "the server asks dataset.path"),
        }
        for name, (document, secagg, refusal) in attempts.items():
            config_file = tmp_path / f"{name}.yaml"
            config_file.write_text(yaml.safe_dump(document))
            out = tmp_path / name
            cluster.flwr_run(out, **{"config-file": str(config_file), "flower.secagg.enabled": secagg,
                                     "model_pool": "cnn5", "rounds": 1, "eval_every": 1})
            log = out / "server.log"
            _wait(cluster, lambda: log.exists() and log.read_text().count("did not describe itself") == 3,
                  f"the nodes' refusals of the {name!r} server")
            text = log.read_text()
            assert text.count(f"refused by the node: {refusal}") == 3, text
            assert "round 1" not in text and not (out / "metrics.csv").exists()  # nothing trained or uploaded
        _wait(cluster, lambda: all((cluster.root / f"supernode{k}.log").read_text().count("pfedlora: refused") == 4
                                   for k in range(3)), "the refusal lines in the nodes' logs")
        for k in range(3):
            node_log = (cluster.root / f"supernode{k}.log").read_text()
            lines = [line for line in node_log.splitlines() if "pfedlora: refused" in line]
            assert len(lines) == 4, node_log[-3000:]  # one line per refused run, no traceback
            assert "Traceback" not in node_log
        # a server that meets the floor: SecAgg+, central DP with secure noise, σ 0.3 >= 0.2, C 0.5 <= 1
        config_file = tmp_path / "meets.yaml"
        config_file.write_text(yaml.safe_dump(secure))
        out = tmp_path / "meets"
        cluster.flwr_run(out, **{"config-file": str(config_file), "flower.secagg.enabled": True,
                                 "model_pool": "cnn5", "rounds": 1, "eval_every": 1})
        _wait(cluster, lambda: (out / "summary.json").exists(), "the run that meets the floor")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["privacy"]["noise_source"] == "secure" and summary["secagg"]["enabled"] is True
        assert "round 1: aggregated 3 of 3 selected clients [0, 1, 2] with SecAgg+" in (out / "server.log").read_text()
    finally:
        cluster.close()
