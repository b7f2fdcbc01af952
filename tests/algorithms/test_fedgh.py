"""FedGH: clients upload per-class representations; the server really trains the global header."""

import torch
import torch.nn.functional as F

from pfedlora.algorithms import fedgh
from pfedlora.algorithms.base import Upload


def _header_loss(state, reps, labels):
    return float(F.cross_entropy(reps @ state["weight"].T + state["bias"], labels))


def test_server_header_loss_decreases_over_its_steps(make_context):
    ctx = make_context(fedgh={"server_lr": 0.05, "server_epochs": 1, "server_batch_size": 4})
    header, _ = fedgh.init_server(ctx)
    header = {k: v for k, v in header.items() if k != fedgh.ROUND}
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(3)
    reps = torch.relu(torch.randn(10, 500, generator=g))[labels] + 0.1 * torch.rand(30, 500, generator=g)
    losses = [_header_loss(header, reps, labels)]
    for _ in range(5):
        header, stats = fedgh.train_global_header(ctx, header, reps, labels, g)
        assert stats.num_steps == 8
        losses.append(_header_loss(header, reps, labels))
    assert all(b < a for a, b in zip(losses, losses[1:]))


def test_aggregate_trains_on_the_classes_clients_hold_and_broadcasts_the_new_header(make_context, make_data):
    ctx = make_context()
    server_state, broadcast = fedgh.init_server(ctx)
    data = make_data(classes=(3, 9))
    result = fedgh.client_update(ctx, 0, fedgh.init_client(ctx, 0), broadcast, data, torch.Generator().manual_seed(0))
    assert result.upload[fedgh.COUNTS].nonzero().flatten().tolist() == [3, 9]
    assert result.upload[fedgh.REPRESENTATIONS].shape == (10, 500)
    present = result.upload[fedgh.COUNTS] > 0
    reps, labels = result.upload[fedgh.REPRESENTATIONS][present], torch.tensor([3, 9])
    before = _header_loss(broadcast, reps, labels)
    new_state, new_broadcast = fedgh.aggregate(ctx, server_state, [Upload(0, result.upload, result.weight)])
    assert not torch.equal(new_broadcast["weight"], broadcast["weight"])  # the optimizer really stepped
    assert _header_loss(new_broadcast, reps, labels) < before
    assert float(new_state[fedgh.ROUND]) == 1 and set(new_broadcast) == {"weight", "bias"}


def test_client_replaces_its_header_with_the_global_one(make_context, make_data):
    ctx = make_context(train={"batch_size": 16, "lr": 0.05, "local_epochs": 0})
    _, broadcast = fedgh.init_server(ctx)
    result = fedgh.client_update(ctx, 1, fedgh.init_client(ctx, 1), broadcast, make_data(),
                                 torch.Generator().manual_seed(0))
    assert torch.equal(result.state["local_model.head.weight"], broadcast["weight"])


def test_the_pass_after_training_is_counted_with_the_clients_flops(make_context, make_data, monkeypatch):
    # the per-class representations come from a forward pass over the training data after training:
    # work the client does, so it is in the client's FLOPs (a marker count shows it is added)
    from pfedlora.metrics import flops

    monkeypatch.setattr(flops, "evaluation_flops", lambda fn, x, batch_size, normalize=None: 10 ** 15)
    ctx = make_context()
    _, broadcast = fedgh.init_server(ctx)
    result = fedgh.client_update(ctx, 0, fedgh.init_client(ctx, 0), broadcast, make_data(),
                                 torch.Generator().manual_seed(0))
    assert 10 ** 15 < sum(s.flops for s in result.stats) < 10 ** 15 + 10 ** 12


def test_last_epoch_records_the_representations_training_computed_and_trains_the_same(check_class_stats_rules):
    check_class_stats_rules(fedgh, "fedgh", fedgh.REPRESENTATIONS, fedgh.COUNTS)
