"""LG-FedAvg: only the header travels; the server averages headers by sample count."""

import torch

from pfedlora.algorithms import lg_fedavg
from pfedlora.algorithms.base import Upload


def test_client_starts_from_the_global_header_and_uploads_only_the_header(make_context, make_data):
    ctx = make_context(train={"batch_size": 16, "lr": 0.05, "local_epochs": 0})
    _, broadcast = lg_fedavg.init_server(ctx)
    assert set(broadcast) == {"weight", "bias"}
    state = lg_fedavg.init_client(ctx, 1)
    # with no training, the uploaded header is exactly the received one
    result = lg_fedavg.client_update(ctx, 1, state, broadcast, make_data(), torch.Generator().manual_seed(0))
    assert set(result.upload) == {"weight", "bias"}
    assert torch.equal(result.upload["weight"], broadcast["weight"])
    # a client never selected is evaluated with the global header, a trained one with its own
    fresh = lg_fedavg.personalized_model(ctx, 0, lg_fedavg.init_client(ctx, 0), broadcast)
    assert torch.equal(fresh.head.weight, broadcast["weight"])


def test_server_averages_headers_weighted_by_samples(make_context):
    ctx = make_context()
    server_state, _ = lg_fedavg.init_server(ctx)
    a = {k: torch.zeros_like(v) for k, v in server_state.items()}
    b = {k: torch.ones_like(v) for k, v in server_state.items()}
    _, broadcast = lg_fedavg.aggregate(ctx, server_state, [Upload(0, a, 30.0), Upload(1, b, 10.0)])
    assert torch.allclose(broadcast["weight"], torch.full_like(a["weight"], 0.25))
