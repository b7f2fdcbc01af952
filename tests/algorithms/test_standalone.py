"""Standalone: local training only, nothing communicated."""

import torch

from pfedlora.algorithms import standalone
from pfedlora.algorithms.base import Upload


def test_clients_train_their_own_model_and_upload_nothing(make_context, make_data):
    ctx = make_context()
    server_state, broadcast = standalone.init_server(ctx)
    assert broadcast == {}
    state = standalone.init_client(ctx, 0)
    result = standalone.client_update(ctx, 0, state, broadcast, make_data(), torch.Generator().manual_seed(0))
    assert result.upload == {}
    assert any(not torch.equal(state[k], result.state[k]) for k in state)
    _, broadcast = standalone.aggregate(ctx, server_state, [Upload(0, result.upload, result.weight)])
    assert broadcast == {}
    model = standalone.personalized_model(ctx, 0, result.state, broadcast)
    assert torch.equal(model.head.weight, result.state["local_model.head.weight"])
