"""FD: per-class mean logits up; per-class averages and who is in them down; leave-one-out targets."""

import torch
import torch.nn.functional as F

from pfedlora.algorithms import fd
from pfedlora.algorithms.base import Upload
from pfedlora.algorithms.local_models import load_local
from pfedlora.metrics.flops import evaluation_flops


def test_upload_is_per_class_mean_logits_with_counts_for_the_classes_held(make_context, make_data):
    ctx = make_context(fd={"class_stats": "after_training"})  # the trained model's logits
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


def _upload(rows: dict[int, float], counts: dict[int, int]):
    logits, class_counts = torch.zeros(10, 10), torch.zeros(10)
    for c, value in rows.items():
        logits[c], class_counts[c] = value, counts[c]
    return {fd.LOGITS: logits, fd.COUNTS: class_counts}


def test_server_averages_each_class_over_the_clients_that_hold_it_and_records_who(make_context):
    ctx = make_context()
    server_state, _ = fd.init_server(ctx)
    first, second = _upload({3: 1.0}, {3: 100}), _upload({3: 3.0, 5: 4.0}, {3: 1, 5: 2})
    state, broadcast = fd.aggregate(ctx, server_state, [Upload(0, first, 100.0), Upload(1, second, 3.0)])
    assert torch.allclose(broadcast[fd.LOGITS][3], torch.full((10,), 2.0))  # each client once
    assert torch.allclose(broadcast[fd.LOGITS][5], torch.full((10,), 4.0))  # a missing class does not count
    assert broadcast[fd.COUNTS][0] == 0
    assert broadcast[fd.HOLDERS][3].tolist() == [1, 1] and broadcast[fd.HOLDERS][5].tolist() == [0, 1]
    assert broadcast[fd.FORMED][3] == 1 and broadcast[fd.FORMED][0] == 0 and broadcast[fd.ROUND] == 1
    # round 2: only client 0 uploads; class 3 is re-formed from it alone, class 5 keeps its average
    state, broadcast = fd.aggregate(ctx, state, [Upload(0, _upload({3: 7.0}, {3: 100}), 100.0)])
    assert broadcast[fd.HOLDERS][3].tolist() == [1, 0] and broadcast[fd.FORMED][3] == 2
    assert broadcast[fd.HOLDERS][5].tolist() == [0, 1] and broadcast[fd.FORMED][5] == 1
    assert torch.allclose(broadcast[fd.LOGITS][5], torch.full((10,), 4.0))


def _federation_of_three(ctx):
    """Clients 0, 1, 2 all hold class 3 (logits 1, 2, 6); client 0 alone holds class 5."""
    server_state, _ = fd.init_server(ctx)
    uploads = [Upload(0, _upload({3: 1.0, 5: 9.0}, {3: 10, 5: 10}), 20.0),
               Upload(1, _upload({3: 2.0}, {3: 10}), 10.0), Upload(2, _upload({3: 6.0}, {3: 10}), 10.0)]
    _, broadcast = fd.aggregate(ctx, server_state, uploads)
    own = {fd.OWN_LOGITS: uploads[0].payload[fd.LOGITS], fd.OWN_ROUND: torch.tensor(1, dtype=torch.int32)}
    return broadcast, own


def test_leave_one_out_target_is_the_mean_of_the_other_holders(make_context):
    ctx = make_context(num_clients=3)
    broadcast, own = _federation_of_three(ctx)
    targets, has_target = fd.distillation_targets(broadcast, 0, own, "leave_one_out")
    assert torch.allclose(targets[3], torch.full((10,), 4.0))  # (2 + 6) / 2, not (1 + 2 + 6) / 3
    assert not has_target[5]  # the client is the class's only holder: nothing to distil from
    assert not has_target[0]  # no one holds class 0
    # the paper's rule off: the plain mean over all holders, the client's own logits included
    targets, has_target = fd.distillation_targets(broadcast, 0, own, "include_own")
    assert torch.allclose(targets[3], torch.full((10,), 3.0)) and has_target[5]
    assert torch.allclose(targets[5], torch.full((10,), 9.0))


def test_a_client_not_in_the_average_or_without_a_matching_upload_gets_the_plain_mean(make_context):
    ctx = make_context(num_clients=4)
    broadcast, own = _federation_of_three(ctx)
    targets, _ = fd.distillation_targets(broadcast, 3, {}, "leave_one_out")  # never uploaded
    assert torch.allclose(targets[3], torch.full((10,), 3.0))
    stale = own | {fd.OWN_ROUND: torch.tensor(2, dtype=torch.int32)}  # its latest upload is not in the average
    targets, has_target = fd.distillation_targets(broadcast, 0, stale, "leave_one_out")
    assert torch.allclose(targets[3], torch.full((10,), 3.0)) and has_target[5]


def test_client_update_keeps_its_upload_and_distils_towards_the_others(make_context, make_data):
    ctx = make_context(num_clients=3)
    broadcast, own = _federation_of_three(ctx)
    data = make_data(classes=(3, 5))
    state = fd.init_client(ctx, 0) | own
    result = fd.client_update(ctx, 0, state, broadcast, data, torch.Generator().manual_seed(0))
    assert torch.equal(result.state[fd.OWN_LOGITS], result.upload[fd.LOGITS])
    assert int(result.state[fd.OWN_ROUND]) == 2  # the aggregation this upload is for
    # the same update with the client's own logits counted in the target trains differently
    include = make_context(num_clients=3, fd={"target": "include_own"})
    other = fd.client_update(include, 0, state, broadcast, data, torch.Generator().manual_seed(0))
    assert not torch.equal(other.upload[fd.LOGITS], result.upload[fd.LOGITS])


def test_distillation_term_pulls_toward_the_target_logits_of_labels_with_a_target():
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    targets = torch.randn(3, 3)
    none_known = fd.distillation_loss(targets, torch.zeros(3, dtype=torch.bool), gamma=1.0, temperature=1.0)
    assert torch.allclose(none_known(model, x, y), F.cross_entropy(model(x), y))
    known = fd.distillation_loss(targets, torch.tensor([True, False, False]), gamma=2.0, temperature=1.0)
    logits = model(x)
    target = F.softmax(targets[0], 0)
    kl = (target * (target.log() - F.log_softmax(logits[:2], 1))).sum(1).mean()
    assert torch.allclose(known(model, x, y), F.cross_entropy(logits, y) + 2.0 * kl, atol=1e-6)


def _last_epoch_and_pass(make_context, make_data, lr: float, epochs: int):
    """FD's upload with class_stats last_epoch and after_training, from the same start and batches."""
    data = make_data(n=70, classes=(2, 7, 9))  # 70 = 4 batches of 16 and a partial one of 6
    uploads, flops = [], []
    for rule in ("last_epoch", "after_training"):
        ctx = make_context(train={"batch_size": 16, "lr": lr, "local_epochs": epochs}, fd={"class_stats": rule})
        _, broadcast = fd.init_server(ctx)
        result = fd.client_update(ctx, 0, fd.init_client(ctx, 0), broadcast, data, torch.Generator().manual_seed(0))
        uploads.append(result.upload)
        flops.append(sum(s.flops for s in result.stats))
    # the pass after training is work: its forward FLOPs are counted with the client's training
    model = load_local(ctx, 0, fd.init_client(ctx, 0))
    assert flops[1] - flops[0] == evaluation_flops(model, data.train_x, ctx.config.train.eval_batch_size) > 0
    return uploads


def test_last_epoch_logits_equal_a_separate_pass_when_the_model_does_not_move(make_context, make_data):
    # lr 1e-30 leaves every weight bit for bit unchanged, so each sample's last-epoch logits are the
    # separate pass's (up to float rounding of different batch compositions); 2 epochs: only the last counts
    recorded, separate = _last_epoch_and_pass(make_context, make_data, lr=1e-30, epochs=2)
    assert torch.equal(recorded[fd.COUNTS], separate[fd.COUNTS])
    assert torch.allclose(recorded[fd.LOGITS], separate[fd.LOGITS], rtol=0, atol=1e-5)
    assert float(recorded[fd.LOGITS].abs().sum()) > 0


def test_last_epoch_logits_come_from_the_model_during_training_not_after(make_context, make_data):
    recorded, separate = _last_epoch_and_pass(make_context, make_data, lr=0.5, epochs=1)
    assert torch.equal(recorded[fd.COUNTS], separate[fd.COUNTS])
    assert not torch.allclose(recorded[fd.LOGITS], separate[fd.LOGITS], atol=1e-3)
