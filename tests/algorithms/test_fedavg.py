"""FedAvg: homogeneous only; averages whole models."""

import pytest
import torch

from pfedlora.algorithms import fedavg
from pfedlora.algorithms.base import Upload
from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.errors import UserError


def test_a_heterogeneous_pool_is_refused_with_one_line():
    with pytest.raises(UserError) as info:
        build_config({"algorithm": "fedavg"})
    assert "fedavg needs one architecture" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError):
        build_config({"algorithm": "fedavg", "num_clients": 2, "client_models": ["cnn5", "cnn4"], "model_pool": ["cnn5"]})
    assert build_config({"algorithm": "fedavg", "model_pool": ["cnn3"]}).client_model(4) == "cnn3"


def test_cli_exits_2_on_a_heterogeneous_pool(tmp_path, capsys):
    assert main(["run", "--set", "algorithm=fedavg", "--out", str(tmp_path / "r")]) == 2
    assert "fedavg needs one architecture" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_server_averages_whole_models_and_clients_are_evaluated_with_the_global_model(make_context, make_data):
    ctx = make_context(model_pool=["cnn5"])
    server_state, broadcast = fedavg.init_server(ctx)
    result = fedavg.client_update(ctx, 0, fedavg.init_client(ctx, 0), broadcast, make_data(),
                                  torch.Generator().manual_seed(0))
    assert result.upload.keys() == broadcast.keys() and result.state == {}
    _, new_broadcast = fedavg.aggregate(ctx, server_state, [Upload(0, result.upload, 1.0), Upload(1, broadcast, 3.0)])
    key = "conv2.weight"
    assert torch.allclose(new_broadcast[key], 0.25 * result.upload[key] + 0.75 * broadcast[key], atol=1e-6)
    model = fedavg.personalized_model(ctx, 1, {}, new_broadcast)
    assert torch.equal(model.conv2.weight, new_broadcast[key])
