"""FD: per-class mean logits up, per-class averages (over clients holding the class) down."""

import torch
import torch.nn.functional as F

from pfedlora.algorithms import fd
from pfedlora.algorithms.base import Upload


def test_upload_is_per_class_mean_logits_with_counts_for_the_classes_held(make_context, make_data):
    ctx = make_context()
    _, broadcast = fd.init_server(ctx)
    data = make_data(classes=(2, 7))
    result = fd.client_update(ctx, 0, fd.init_client(ctx, 0), broadcast, data, torch.Generator().manual_seed(0))
    logits, counts = result.upload[fd.LOGITS], result.upload[fd.COUNTS]
    assert logits.shape == (10, 10) and set(result.upload) == {fd.LOGITS, fd.COUNTS}
    assert counts[2] + counts[7] == data.num_train and counts.sum() == data.num_train
    model = fd.personalized_model(ctx, 0, result.state, broadcast)
    with torch.no_grad():
        assert torch.allclose(logits[7], model(data.train_x[data.train_y == 7]).mean(0), atol=1e-5)
    assert torch.equal(logits[0], torch.zeros(10))


def test_server_averages_each_class_over_the_clients_that_hold_it(make_context):
    ctx = make_context()
    server_state, _ = fd.init_server(ctx)
    first = {fd.LOGITS: torch.zeros(10, 10), fd.COUNTS: torch.zeros(10)}
    second = {fd.LOGITS: torch.zeros(10, 10), fd.COUNTS: torch.zeros(10)}
    first[fd.LOGITS][3], first[fd.COUNTS][3] = 1.0, 100
    second[fd.LOGITS][3], second[fd.COUNTS][3] = 3.0, 1
    second[fd.LOGITS][5], second[fd.COUNTS][5] = 4.0, 2
    _, broadcast = fd.aggregate(ctx, server_state, [Upload(0, first, 100.0), Upload(1, second, 3.0)])
    assert torch.allclose(broadcast[fd.LOGITS][3], torch.full((10,), 2.0))  # each client once
    assert torch.allclose(broadcast[fd.LOGITS][5], torch.full((10,), 4.0))  # a missing class does not count
    assert broadcast[fd.COUNTS][0] == 0


def test_distillation_term_pulls_toward_the_global_logits_of_known_labels_only():
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    global_logits = torch.randn(3, 3)
    none_known = fd.distillation_loss(global_logits, torch.zeros(3), gamma=1.0, temperature=1.0)
    assert torch.allclose(none_known(model, x, y), F.cross_entropy(model(x), y))
    known = fd.distillation_loss(global_logits, torch.tensor([1.0, 0.0, 0.0]), gamma=2.0, temperature=1.0)
    logits = model(x)
    target = F.softmax(global_logits[0], 0)
    kl = (target * (target.log() - F.log_softmax(logits[:2], 1))).sum(1).mean()
    assert torch.allclose(known(model, x, y), F.cross_entropy(logits, y) + 2.0 * kl, atol=1e-6)
