"""The Flower runtime's pure parts: payload <-> ArrayRecord, byte accounting, run-config parsing."""

import pytest
import torch

pytest.importorskip("flwr")

from pfedlora.errors import UserError  # noqa: E402
from pfedlora.federation.flower import APP_DIR  # noqa: E402
from pfedlora.federation.flower.client_app import node_config_for  # noqa: E402
from pfedlora.federation.flower.payload import (  # noqa: E402
    from_array_record,
    payload_bytes,
    record_bytes,
    to_array_record,
)
from pfedlora.federation.flower.protocol import config_from_run_config, config_from_text, config_to_text  # noqa: E402


def test_payload_round_trips_names_dtypes_and_values_and_counts_raw_bytes():
    payload = {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4).half(), "bn.num_batches_tracked": torch.tensor(7)}
    record = to_array_record(payload)
    back = from_array_record(record)
    assert list(back) == list(payload)
    for name in payload:
        assert back[name].dtype == payload[name].dtype
        assert torch.equal(back[name], payload[name])
    assert record_bytes(record) == payload_bytes(payload) == 4 * 3 * 4 + 4 * 2 + 8


def test_run_config_overrides_config_keys_and_splits_lists():
    config, out, overwrite = config_from_run_config({
        "config-file": "", "out-dir": "/tmp/x", "overwrite": True, "rounds": 3, "num_clients": 3,
        "model_pool": "cnn3, cnn4", "client_models": "", "train.batch_size": 16, "min_clients": 2,
    })
    assert (out, overwrite) == ("/tmp/x", True)
    assert config.rounds == 3 and config.model_pool == ["cnn3", "cnn4"] and config.client_models is None
    assert config.train.batch_size == 16 and config.min_clients == 2
    assert config_from_text(config_to_text(config)) == config
    with pytest.raises(UserError, match="min_clients"):
        config_from_run_config({"min_clients": 0})


def test_app_directory_ships_with_the_package_and_names_both_apps():
    text = (APP_DIR / "pyproject.toml").read_text()
    assert 'serverapp = "pfedlora.federation.flower.server_app:app"' in text
    assert 'clientapp = "pfedlora.federation.flower.client_app:app"' in text


def test_node_config_sets_the_client_and_its_architecture():
    config, _, _ = config_from_run_config({"num_clients": 3, "model_pool": "cnn3,cnn4,cnn5"})
    node_config, client_id = node_config_for(config, {"partition-id": 1, "num-partitions": 3, "model": "cnn1"})
    assert client_id == 1 and node_config.client_model(1) == "cnn1" and node_config.client_model(2) == "cnn5"
    with pytest.raises(UserError, match="num-partitions"):
        node_config_for(config, {"partition-id": 0, "num-partitions": 4})
    with pytest.raises(UserError, match="partition-id"):
        node_config_for(config, {"num-partitions": 3})
