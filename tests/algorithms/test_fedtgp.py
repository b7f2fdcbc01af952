"""FedTGP: prototypes up, server-trained global prototypes (adaptive-margin contrastive loss) down.

The federated term is the prototype regulariser ``fedtgp.lam``: at 0 the clients' local models are
Standalone's bit for bit; at its default they differ. Each test here fails when that term is
removed from ``fedtgp.prototype_loss`` (checked by zeroing it in the code and rerunning).

A client uploads the prototypes of the classes it holds and their indices, nothing else: the bytes
counted (and sent on Flower) are ``held × (500 × 4 + 8)``, and the server's result is the one the
dense ``[C, 500]`` upload with class counts gave (its rule is kept here as the reference).
"""

import pytest
import torch
import torch.nn.functional as F

from pfedlora.algorithms import fedtgp, get_algorithm
from pfedlora.algorithms.base import Upload, derive_seed, unprefixed
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.federation.payload import transmit
from pfedlora.federation.simulation import ClientStore, Federation, run_round
from pfedlora.federation.validation import UpdateValidator
from pfedlora.metrics.flops import count_server_flops

# 5 clients holding 4 classes each (as tests/algorithms/test_federated_terms.py)
SMALL = {"num_clients": 5, "rounds": 2, "partition": {"classes_per_client": 4},
         "dataset": {"max_train_samples": 500, "max_test_samples": 200},
         "train": {"batch_size": 32, "lr": 0.05}, "validation": {"norm_factor": None},
         "fedtgp": {"server_epochs": 20}}


def _local_models(algorithm: str, overrides: list[str] = ()) -> list[dict[str, torch.Tensor]]:
    document = SMALL if algorithm == "fedtgp" else {k: v for k, v in SMALL.items() if k != "fedtgp"}
    config = build_config({**document, "algorithm": algorithm}, list(overrides))
    federation = Federation.build(config)
    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    for round_index in range(1, config.rounds + 1):
        server_state, broadcast, result = run_round(federation, store, server_state, broadcast, round_index)
        assert not result.rejections and result.aggregated
    return [unprefixed("local_model.", store.get(k)) for k in range(config.num_clients)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def standalone():
    return _local_models("standalone")


def test_the_regulariser_changes_every_clients_local_model(standalone):
    assert all(not _same(mine, alone) for mine, alone in zip(_local_models("fedtgp"), standalone))


def test_with_the_regulariser_at_zero_the_run_is_standalone_bit_for_bit(standalone):
    assert all(_same(mine, alone) for mine, alone in zip(_local_models("fedtgp", ["fedtgp.lam=0"]), standalone))


def test_client_loss_is_ce_plus_lam_times_mse_to_the_label_prototype(make_context):
    ctx = make_context(algorithm="fedtgp")
    model = ctx.new_model("cnn1", seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 32, 32, generator=g), torch.tensor([0, 1, 2, 2, 9, 0])
    prototypes = torch.randn(10, 500, generator=g)
    rep = model.represent(x)
    ce = F.cross_entropy(model.head(rep), y)
    regulariser = ((rep - prototypes[y]) ** 2).mean()
    assert torch.allclose(fedtgp.prototype_loss(prototypes, 3.0)(model, x, y), ce + 3.0 * regulariser)
    assert float(regulariser.detach()) > 0


def test_first_round_is_unregularised_then_every_class_has_a_trained_prototype(make_context, make_data):
    ctx = make_context(fedtgp={"server_epochs": 5})
    state, broadcast = fedtgp.init_server(ctx)
    assert float(broadcast[fedtgp.TRAINED]) == 0
    data = make_data(classes=(3, 9))
    result = fedtgp.client_update(ctx, 0, fedtgp.init_client(ctx, 0), broadcast, data, torch.Generator().manual_seed(0))
    alone = get_algorithm("standalone").client_update(ctx, 0, fedtgp.init_client(ctx, 0), {}, data,
                                                     torch.Generator().manual_seed(0))
    assert _same(result.state, alone.state)  # no global prototype yet: plain CE
    state, broadcast = fedtgp.aggregate(ctx, state, [Upload(0, result.upload, result.weight)])
    assert float(broadcast[fedtgp.TRAINED]) == 1
    assert broadcast[fedtgp.PROTOTYPES].shape == (10, 500) and bool(broadcast[fedtgp.PROTOTYPES].ne(0).all(1).all())
    again = fedtgp.client_update(ctx, 0, result.state, broadcast, data, torch.Generator().manual_seed(1))
    plain = get_algorithm("standalone").client_update(ctx, 0, result.state, {}, data, torch.Generator().manual_seed(1))
    assert not _same(again.state, plain.state)


def _uploads(prototypes: dict[int, list[torch.Tensor]]) -> list[Upload]:
    """``{client: [prototype of class 0, ...]}`` with None for classes the client lacks."""
    uploads = []
    for client, rows in prototypes.items():
        held = [c for c, row in enumerate(rows) if row is not None]
        payload = {fedtgp.HELD_PROTOTYPES: torch.stack([rows[c] for c in held]) if held else torch.zeros(0, 500),
                   fedtgp.HELD_CLASSES: torch.tensor(held, dtype=torch.int64)}
        uploads.append(Upload(client, payload, 10.0))
    return uploads


def test_margin_is_min_of_the_largest_class_gap_and_the_threshold():
    e = torch.eye(500)
    # class centres (plain mean over holders): 0 -> e0, 1 -> 3 e1 (mean of 2 e1 and 4 e1), 2 -> 10 e2
    uploads = _uploads({0: [e[0], 2 * e[1], None], 1: [None, 4 * e[1], 10 * e[2]]})
    centres = [e[0], 3 * e[1], 10 * e[2]]
    # each class's gap: the distance to its nearest other class (sqrt 10, sqrt 10, sqrt 101)
    gaps = [min(torch.dist(a, b) for j, b in enumerate(centres) if j != i) for i, a in enumerate(centres)]
    assert torch.allclose(fedtgp.adaptive_margin(uploads, 100.0, 10), max(gaps))
    assert torch.allclose(max(gaps), torch.tensor(101.0).sqrt())
    assert float(fedtgp.adaptive_margin(uploads, 2.0, 10)) == 2.0
    assert float(fedtgp.adaptive_margin(_uploads({0: [e[0]]}), 7.0, 10)) == 7.0  # one class: the threshold


def test_server_loss_is_the_margin_contrastive_ce_and_training_lowers_it(make_context):
    ctx = make_context(fedtgp={"server_epochs": 30, "server_lr": 0.05, "server_batch_size": 8})
    tgp = fedtgp.TrainableGlobalPrototypes(10)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(2)
    protos = torch.relu(torch.randn(10, 500, generator=g))[labels] + 0.1 * torch.rand(20, 500, generator=g)
    generated = tgp.all_prototypes()
    distance = torch.cdist(protos, generated)
    expected = F.cross_entropy(-(distance + 2.0 * F.one_hot(labels, 10)), labels)
    loss_fn = fedtgp.margin_contrastive_loss(2.0)
    assert torch.allclose(loss_fn(tgp, protos, labels), expected, rtol=1e-4)
    before = float(loss_fn(tgp, protos, labels).detach())
    stats = fedtgp.train_global_prototypes(ctx, tgp, protos, labels, 2.0, g)
    assert stats.num_steps == 30 * 3 and stats.flops > 0
    assert float(loss_fn(tgp, protos, labels).detach()) < before


def test_server_training_is_counted_as_server_flops(make_context):
    ctx = make_context(fedtgp={"server_epochs": 4, "server_batch_size": 2})
    state, _ = fedtgp.init_server(ctx)
    e = torch.eye(500)
    uploads = _uploads({0: [e[0], e[1]], 1: [e[1], e[2]]})  # 4 prototypes: 2 steps per epoch
    (new_state, broadcast), flops = count_server_flops(fedtgp.aggregate, ctx, state, uploads)
    one_forward = 2 * 10 * 500 * 500 * 2  # the two 500x500 layers over the 10 class embeddings
    assert flops > 4 * 2 * 3 * one_forward  # 8 steps, backward ~2x forward
    assert float(new_state[fedtgp.ROUND]) == 1 and set(broadcast) == {fedtgp.PROTOTYPES, fedtgp.TRAINED}
    assert not torch.equal(new_state["tgp.embedding.weight"], state["tgp.embedding.weight"])


def _client_upload(make_context, make_data):
    ctx = make_context(fedtgp={"server_epochs": 1})
    _, broadcast = fedtgp.init_server(ctx)
    result = fedtgp.client_update(ctx, 0, fedtgp.init_client(ctx, 0), broadcast, make_data(classes=(1, 4, 7)),
                                  torch.Generator().manual_seed(0))
    return ctx, broadcast, result.upload


def test_upload_and_broadcast_have_the_declared_shapes(make_context, make_data):
    ctx, broadcast, upload = _client_upload(make_context, make_data)
    spec = fedtgp.ALGORITHM.expected_upload(ctx, broadcast)
    assert {k: (s.shape, s.dtype, s.max_numel) for k, s in spec.items()} == {
        fedtgp.HELD_PROTOTYPES: ((None, 500), torch.float32, 10 * 500),
        fedtgp.HELD_CLASSES: ((None,), torch.int64, 10)}
    # the three classes the client holds, nothing of the seven it lacks
    assert {k: (tuple(t.shape), t.dtype) for k, t in upload.items()} == {
        fedtgp.HELD_PROTOTYPES: ((3, 500), torch.float32), fedtgp.HELD_CLASSES: ((3,), torch.int64)}
    assert upload[fedtgp.HELD_CLASSES].tolist() == [1, 4, 7]
    assert bool(upload[fedtgp.HELD_PROTOTYPES].ne(0).any(1).all())
    state, _ = fedtgp.init_server(ctx)
    _, new_broadcast = fedtgp.aggregate(ctx, state, [Upload(0, upload, 1.0)])
    assert {k: tuple(t.shape) for k, t in new_broadcast.items()} == {k: tuple(t.shape) for k, t in broadcast.items()}
    assert {k: tuple(t.shape) for k, t in broadcast.items()} == {fedtgp.PROTOTYPES: (10, 500), fedtgp.TRAINED: ()}


def test_a_malformed_upload_is_rejected(make_context, make_data):
    ctx, broadcast, upload = _client_upload(make_context, make_data)
    algorithm = fedtgp.ALGORITHM
    spec, check = algorithm.expected_upload(ctx, broadcast), algorithm.upload_check(ctx, broadcast)
    validator = UpdateValidator(norm_factor=None)
    assert not validator.validate([Upload(0, upload, 1.0)], spec, broadcast, check).rejected
    classes = upload[fedtgp.HELD_CLASSES]
    malformed = [dict(upload) | {fedtgp.HELD_CLASSES: bad} for bad in (
        classes[:2],  # fewer indices than prototypes
        torch.tensor([1, 4, 10]),  # not a class of the task
        torch.tensor([-1, 4, 7]),
        torch.tensor([1, 7, 4]),  # not ascending
        torch.tensor([1, 4, 4]),  # a class twice
    )]
    for bad in malformed:
        report = validator.validate([Upload(0, bad, 1.0)], spec, broadcast, check)
        assert [r.reason for r in report.rejected] == ["malformed"], report.rejected
    wrong_width = dict(upload) | {fedtgp.HELD_PROTOTYPES: upload[fedtgp.HELD_PROTOTYPES][:, :100]}
    float_classes = dict(upload) | {fedtgp.HELD_CLASSES: classes.float()}
    too_many = dict(upload) | {fedtgp.HELD_PROTOTYPES: torch.zeros(11, 500), fedtgp.HELD_CLASSES: torch.arange(11)}
    for bad, reason in ((wrong_width, "shape"), (float_classes, "dtype"), (too_many, "oversized")):
        report = validator.validate([Upload(0, bad, 1.0)], spec, broadcast, check)
        assert [r.reason for r in report.rejected] == [reason]


def test_not_eligible_for_client_level_dp():
    from pfedlora.federation.preflight import check_run

    config = build_config({**SMALL, "algorithm": "fedtgp"})
    assert fedtgp.ALGORITHM.averages_uploads(config) is False
    central = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.8}
    pytest.importorskip("dp_accounting")
    with pytest.raises(UserError, match="algorithm fedtgp is not supported"):
        check_run(build_config({**SMALL, "algorithm": "fedtgp", "privacy": central}))


def test_the_regulariser_pulls_representations_towards_the_global_prototypes(make_context, make_data):
    ctx = make_context(algorithm="fedtgp")
    data = make_data(n=96)
    state = fedtgp.init_client(ctx, 0)
    prototypes = torch.relu(torch.randn(10, 500, generator=torch.Generator().manual_seed(3)))
    broadcast = {fedtgp.PROTOTYPES: prototypes, fedtgp.TRAINED: torch.ones(())}
    distances = []
    for method, received in ((fedtgp, broadcast), (get_algorithm("standalone"), {})):
        result = method.client_update(ctx, 0, state, received, data, torch.Generator().manual_seed(0))
        model = get_algorithm("standalone").personalized_model(ctx, 0, result.state, {})
        with torch.no_grad():
            distances.append(float(F.mse_loss(model.represent(data.train_x), prototypes[data.train_y])))
    assert distances[0] < distances[1]


def test_cli_runs_two_rounds_on_the_bundled_digits(tmp_path):
    from pfedlora.cli import main

    out = tmp_path / "run"
    assert main(["run", "--set", "algorithm=fedtgp", "--set", "rounds=2", "--set", "num_clients=5",
                 "--set", "dataset.max_train_samples=300", "--set", "dataset.max_test_samples=90",
                 "--out", str(out)]) == 0
    assert (out / "summary.json").exists()


def test_the_pass_after_training_is_counted_with_the_clients_flops(make_context, make_data, monkeypatch):
    # the prototypes come from a forward pass over the training data after training: work the client
    # does, so it is in the client's FLOPs (a marker count shows it is added)
    from pfedlora.metrics import flops

    monkeypatch.setattr(flops, "evaluation_flops", lambda fn, x, batch_size, normalize=None: 10 ** 15)
    ctx = make_context(fedtgp={"server_epochs": 1})
    _, broadcast = fedtgp.init_server(ctx)
    result = fedtgp.client_update(ctx, 0, fedtgp.init_client(ctx, 0), broadcast, make_data(),
                                  torch.Generator().manual_seed(0))
    assert 10 ** 15 < sum(s.flops for s in result.stats) < 10 ** 15 + 10 ** 12


@pytest.mark.parametrize("trained", [False, True])  # the first round's plain CE, then the regularised loss
def test_last_epoch_records_the_representations_training_computed_and_trains_the_same(check_class_stats_rules,
                                                                                       trained):
    g = torch.Generator().manual_seed(1)
    broadcast = ({fedtgp.PROTOTYPES: torch.rand(10, 500, generator=g), fedtgp.TRAINED: torch.ones(())}
                 if trained else None)
    results, ctx = check_class_stats_rules(fedtgp, "fedtgp", fedtgp.HELD_PROTOTYPES, fedtgp.HELD_CLASSES, broadcast)
    assert fedtgp.check_upload(ctx, broadcast, results["last_epoch", 0.5].upload) is None


def test_a_client_sends_only_its_classes_and_the_bytes_counted_and_sent_are_theirs():
    config = build_config({**SMALL, "algorithm": "fedtgp", "rounds": 1})
    federation = Federation.build(config)
    store = ClientStore(federation)
    state, broadcast = federation.algorithm.init_server(federation.context)
    _, _, result = run_round(federation, store, state, broadcast, 1)
    held = [int(client.train_y.unique().numel()) for client in federation.clients]
    assert held == [4] * 5 and result.aggregated
    assert result.up_bytes == sum(h * (500 * 4 + 8) for h in held)  # float32 rows + int64 indices
    # one upload through the simulator's wire and Flower's message: the same bytes, the same tensors
    upload = fedtgp.client_update(federation.context, 0, store.get(0), broadcast, federation.clients[0],
                                  torch.Generator().manual_seed(0)).upload
    received, sent = transmit(upload, "float16")
    assert sent == 4 * (500 * 2 + 8)  # a narrower wire dtype narrows the rows, not the indices
    assert received[fedtgp.HELD_CLASSES].dtype == torch.int64
    pytest.importorskip("flwr")
    from pfedlora.federation.flower.payload import from_array_record, record_bytes, to_array_record

    record = to_array_record(upload, "float32")
    assert record_bytes(record) == 4 * (500 * 4 + 8)
    assert _same(from_array_record(record), upload)


def _dense_reference(ctx, state, uploads):
    """The server's rule on the former dense upload (``[C, 500]`` rows, zero for absent classes, and
    class counts), as it was before uploads carried the held rows only."""
    dense = []
    for upload in uploads:
        protos, counts = torch.zeros(10, 500), torch.zeros(10)
        protos[upload.payload[fedtgp.HELD_CLASSES]] = upload.payload[fedtgp.HELD_PROTOTYPES]
        counts[upload.payload[fedtgp.HELD_CLASSES]] = 7.0
        dense.append((protos, counts))
    totals, holders = None, None
    for protos, counts in dense:
        present = (counts > 0).to(torch.float64)
        means = protos.to(torch.float64) * present.unsqueeze(1)
        totals = means if totals is None else totals + means
        holders = present if holders is None else holders + present
    centres = totals[holders > 0] / holders[holders > 0].unsqueeze(1)
    distances = torch.cdist(centres, centres)
    distances.fill_diagonal_(float("inf"))
    margin = torch.clamp(distances.min(dim=1).values.max(), max=100.0).to(torch.float32)
    tgp = fedtgp.TrainableGlobalPrototypes(10)
    tgp.load_state_dict(unprefixed(fedtgp.TGP, state))
    generator = torch.Generator().manual_seed(derive_seed(ctx.config.seed, "fedtgp-server", 1))
    fedtgp.train_global_prototypes(ctx, tgp, torch.cat([p[c > 0] for p, c in dense]),
                                   torch.cat([(c > 0).nonzero().flatten() for _, c in dense]), float(margin), generator)
    with torch.no_grad():
        return margin, tgp.eval().all_prototypes()


def test_the_server_result_from_held_rows_is_the_dense_uploads_bit_for_bit(make_context):
    ctx = make_context(fedtgp={"server_epochs": 3, "server_batch_size": 4})
    state, _ = fedtgp.init_server(ctx)
    g = torch.Generator().manual_seed(5)
    rows = lambda: torch.relu(torch.randn(500, generator=g))  # noqa: E731
    uploads = _uploads({0: [rows(), None, rows(), rows()], 1: [None, rows(), rows()], 2: [rows(), None, None, rows()]})
    new_state, broadcast = fedtgp.aggregate(ctx, state, uploads)
    margin, prototypes = _dense_reference(ctx, state, uploads)
    assert torch.equal(new_state[fedtgp.MARGIN], margin)
    assert torch.equal(broadcast[fedtgp.PROTOTYPES], prototypes)
