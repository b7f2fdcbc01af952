"""FedProto: count-weighted prototype averaging and the prototype regulariser."""

import torch
import torch.nn.functional as F

from pfedlora.algorithms import fedproto
from pfedlora.algorithms.base import Upload
from pfedlora.algorithms.local_models import load_local
from pfedlora.metrics.flops import evaluation_flops


def _upload(value, counts):
    prototypes = torch.zeros(10, 500)
    class_counts = torch.zeros(10)
    for c, n in counts.items():
        prototypes[c], class_counts[c] = value, n
    return {fedproto.PROTOTYPES: prototypes, fedproto.COUNTS: class_counts}


def test_server_takes_the_plain_mean_over_holders_by_default_as_the_authors_code(make_context):
    ctx = make_context()
    server_state, _ = fedproto.init_server(ctx)
    uploads = [Upload(0, _upload(1.0, {4: 30, 6: 5}), 35.0), Upload(1, _upload(5.0, {4: 10}), 10.0)]
    _, broadcast = fedproto.aggregate(ctx, server_state, uploads)
    assert torch.allclose(broadcast[fedproto.PROTOTYPES][4], torch.full((500,), 3.0))  # (1 + 5) / 2
    assert torch.allclose(broadcast[fedproto.PROTOTYPES][6], torch.full((500,), 1.0))
    assert broadcast[fedproto.COUNTS].tolist()[4] == 40 and broadcast[fedproto.COUNTS][0] == 0


def test_samples_aggregation_weights_prototypes_by_class_counts(make_context):
    ctx = make_context(fedproto={"aggregation": "samples"})
    server_state, _ = fedproto.init_server(ctx)
    uploads = [Upload(0, _upload(1.0, {4: 30, 6: 5}), 35.0), Upload(1, _upload(5.0, {4: 10}), 10.0)]
    _, broadcast = fedproto.aggregate(ctx, server_state, uploads)
    assert torch.allclose(broadcast[fedproto.PROTOTYPES][4], torch.full((500,), 2.0))  # (30·1 + 10·5) / 40
    assert torch.allclose(broadcast[fedproto.PROTOTYPES][6], torch.full((500,), 1.0))


def test_loss_is_ce_plus_lambda_times_distance_to_the_label_prototype(make_context, make_data):
    ctx = make_context()
    model = fedproto.personalized_model(ctx, 0, fedproto.init_client(ctx, 0), {})
    data = make_data(n=8)
    x, y = data.train_x, data.train_y
    prototypes = torch.randn(10, 500)
    rep = model.represent(x)
    ce = F.cross_entropy(model.head(rep), y)
    unknown = fedproto.prototype_loss(prototypes, torch.zeros(10), lam=3.0)
    assert torch.allclose(unknown(model, x, y), ce)
    known = fedproto.prototype_loss(prototypes, torch.ones(10), lam=3.0)
    expected = ce + 3.0 * ((rep - prototypes[y]) ** 2).mean()
    assert torch.allclose(known(model, x, y), expected, atol=1e-5)


def test_upload_is_the_mean_representation_per_held_class(make_context, make_data):
    ctx = make_context(fedproto={"class_stats": "after_training"})  # the trained model's representations
    _, broadcast = fedproto.init_server(ctx)
    data = make_data(classes=(1, 8))
    result = fedproto.client_update(ctx, 0, fedproto.init_client(ctx, 0), broadcast, data,
                                    torch.Generator().manual_seed(0))
    model = fedproto.personalized_model(ctx, 0, result.state, broadcast)
    with torch.no_grad():
        expected = model.represent(data.train_x[data.train_y == 8]).mean(0)
    assert torch.allclose(result.upload[fedproto.PROTOTYPES][8], expected, atol=1e-5)
    assert result.upload[fedproto.COUNTS].nonzero().flatten().tolist() == [1, 8]


def test_last_epoch_prototypes_equal_a_separate_pass_when_the_model_does_not_move(make_context, make_data):
    """class_stats last_epoch (the authors' rule, no pass after training) averages the
    representations the last epoch's mini-batches computed: with lr 1e-30 (weights bit for bit
    unchanged) they equal the separate pass up to float rounding; with a real lr they differ."""
    data = make_data(n=70, classes=(1, 8))
    uploads = {}
    for lr in (1e-30, 0.5):
        for rule in ("last_epoch", "after_training"):
            ctx = make_context(train={"batch_size": 16, "lr": lr, "local_epochs": 2}, fedproto={"class_stats": rule})
            _, broadcast = fedproto.init_server(ctx)
            result = fedproto.client_update(ctx, 0, fedproto.init_client(ctx, 0), broadcast, data,
                                            torch.Generator().manual_seed(0))
            uploads[lr, rule], uploads[lr, rule, "flops"] = result.upload, sum(s.flops for s in result.stats)
        # the pass after training is work: its forward FLOPs are counted with the client's training
        model = load_local(ctx, 0, fedproto.init_client(ctx, 0))
        extra = evaluation_flops(model.represent, data.train_x, ctx.config.train.eval_batch_size)
        assert uploads[lr, "after_training", "flops"] - uploads[lr, "last_epoch", "flops"] == extra > 0
    recorded, separate = uploads[1e-30, "last_epoch"], uploads[1e-30, "after_training"]
    assert torch.equal(recorded[fedproto.COUNTS], separate[fedproto.COUNTS])
    assert torch.allclose(recorded[fedproto.PROTOTYPES], separate[fedproto.PROTOTYPES], rtol=0, atol=1e-5)
    assert float(recorded[fedproto.PROTOTYPES].abs().sum()) > 0
    moved, after = uploads[0.5, "last_epoch"], uploads[0.5, "after_training"]
    assert not torch.allclose(moved[fedproto.PROTOTYPES], after[fedproto.PROTOTYPES], atol=1e-3)
