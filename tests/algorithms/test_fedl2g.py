"""FedL2G: guiding vectors down, their meta-gradients (quiz loss through one guided SGD step) up.

The federated term is the guiding loss ``fedl2g.lam``. With it at 0 and the quiz set left in the
training data (``fedl2g.hold_out_quiz=false``: holding it out changes the data, not the guidance),
the clients' local models are Standalone's bit for bit; with it on they differ.

A client uploads the meta-gradient rows of the classes its study batch held and their indices,
nothing else: the bytes counted (and sent on Flower) are ``studied × (d × 4 + 8)``, and the server's
step is the one the dense ``[C, d]`` upload with class counts gave (kept here as the reference).
"""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from pfedlora.algorithms import fedl2g, get_algorithm
from pfedlora.algorithms.base import Upload, unprefixed
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.federation.payload import transmit
from pfedlora.federation.simulation import ClientStore, Federation, run_round
from pfedlora.federation.validation import UpdateValidator
from pfedlora.metrics import flops as flop_count

# as tests/algorithms/test_federated_terms.py; the quiz set stays in the training data so only the
# guidance can make a difference
SMALL = {"num_clients": 5, "rounds": 2, "partition": {"classes_per_client": 4},
         "dataset": {"max_train_samples": 500, "max_test_samples": 200},
         "train": {"batch_size": 32, "lr": 0.05}, "validation": {"norm_factor": None}}


def _local_models(algorithm: str, overrides: list[str] = ()) -> list[dict[str, torch.Tensor]]:
    config = build_config({**SMALL, "algorithm": algorithm}, list(overrides))
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


@pytest.mark.parametrize("target", ["features", "logits"])
def test_the_guidance_changes_every_clients_local_model(target, standalone):
    models = _local_models("fedl2g", ["fedl2g.hold_out_quiz=false", f"fedl2g.target={target}"])
    assert all(not _same(mine, alone) for mine, alone in zip(models, standalone))


def test_with_the_guidance_at_zero_the_run_is_standalone_bit_for_bit(standalone):
    models = _local_models("fedl2g", ["fedl2g.hold_out_quiz=false", "fedl2g.lam=0"])
    assert all(_same(mine, alone) for mine, alone in zip(models, standalone))


def _ctx(make_context, **settings):
    return make_context(fedl2g=settings)


def test_client_loss_guides_features_or_logits(make_context):
    model = make_context().new_model("cnn1", seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 32, 32, generator=g), torch.tensor([0, 1, 2, 2, 9, 0])
    rep = model.represent(x)
    logits = model.head(rep)
    ce = F.cross_entropy(logits, y)
    features, classes = torch.randn(10, 500, generator=g), torch.randn(10, 10, generator=g)
    assert torch.allclose(fedl2g.guided_loss(features, 2.0, "features")(model, x, y),
                          ce + 2.0 * ((rep - features[y]) ** 2).mean())
    assert torch.allclose(fedl2g.guided_loss(classes, 2.0, "logits")(model, x, y),
                          ce + 2.0 * ((logits - classes[y]) ** 2).mean())


@pytest.mark.parametrize("target", ["features", "logits"])
def test_meta_gradient_is_the_quiz_loss_gradient_through_one_guided_sgd_step(target, make_context):
    """The paper's first-order form: ∂quiz/∂G_c = lr·λ·2/(B·d) · Σ_{i: y_i = c} J_f(x_i) v,
    with v = ∇θ' CE(θ'; quiz) and J_f the Jacobian of the guided output in the parameters."""
    ctx = _ctx(make_context, target=target, lam=3.0)
    model = ctx.new_model("cnn5", seed=0)
    lr, lam, d = ctx.config.train.lr, 3.0, fedl2g.guidance_dim(ctx)
    g = torch.Generator().manual_seed(1)
    study_x, study_y = torch.randn(8, 1, 32, 32, generator=g), torch.tensor([0, 0, 3, 3, 3, 5, 5, 0])
    quiz_x, quiz_y = torch.randn(4, 1, 32, 32, generator=g), torch.tensor([0, 3, 5, 7])
    guidance = torch.randn(10, d, generator=g)
    grad, _ = fedl2g.meta_gradient(ctx, model, guidance, study_x, study_y, quiz_x, quiz_y)

    names = [n for n, _ in model.named_parameters()]
    theta = tuple(p.detach() for p in model.parameters())

    def guided(*params):
        out = functional_call(fedl2g._Outputs(model), {f"model.{n}": p for n, p in zip(names, params)}, (study_x,))
        return out[0] if target == "features" else out[1]

    def pseudo(*params):
        logits = functional_call(model, dict(zip(names, params)), (study_x,))
        return F.cross_entropy(logits, study_y) + lam * F.mse_loss(guided(*params), guidance[study_y])

    params = tuple(t.clone().requires_grad_() for t in theta)
    grads = torch.autograd.grad(pseudo(*params), params)
    stepped = tuple((t - lr * gr).detach().requires_grad_() for t, gr in zip(theta, grads))
    quiz = F.cross_entropy(functional_call(model, dict(zip(names, stepped)), (quiz_x,)), quiz_y)
    v = torch.autograd.grad(quiz, stepped)
    _, jv = torch.autograd.functional.jvp(guided, theta, v)  # [B, d]
    expected = torch.zeros(10, d).index_add_(0, study_y, jv) * lr * lam * 2 / (study_y.numel() * d)
    assert torch.allclose(grad, expected, rtol=1e-3, atol=1e-9)
    assert grad[[0, 3, 5]].ne(0).any(1).all() and not grad[[1, 2, 4, 6, 7, 8, 9]].any()


def _client(make_context, make_data, **settings):
    ctx = _ctx(make_context, **settings)
    _, broadcast = fedl2g.init_server(ctx)
    state = fedl2g.init_client(ctx, 0)
    data = make_data(n=64, classes=(1, 4, 7))
    result = fedl2g.client_update(ctx, 0, state, broadcast, data, torch.Generator().manual_seed(0))
    return ctx, broadcast, state, data, result


def test_the_quiz_set_is_held_out_and_the_meta_study_leaves_the_model_alone(make_context, make_data):
    ctx, _, _, _, result = _client(make_context, make_data, quiz_size=10)
    train, meta = result.stats
    assert train.module == "local_model" and train.num_samples == 64 - 10
    assert meta.module == "meta_study" and meta.flops > 0 and meta.num_steps == 0
    assert meta.num_samples == ctx.config.train.batch_size + 10  # one study batch, the quiz set
    _, _, _, _, kept = _client(make_context, make_data, hold_out_quiz=False)
    assert kept.stats[0].num_samples == 64
    # no local training: the state is the initial one, though the meta-study ran on it
    ctx, _, state, _, warm = _client(make_context, make_data, warm_up_rounds=1)
    assert [s.module for s in warm.stats] == ["meta_study"] and _same(warm.state, state)
    assert warm.upload[fedl2g.GRADS].any()
    # no quiz set (one training sample): nothing studied, nothing sent
    ctx = _ctx(make_context)
    _, broadcast = fedl2g.init_server(ctx)
    lone = fedl2g.client_update(ctx, 0, fedl2g.init_client(ctx, 0), broadcast, make_data(n=1),
                                torch.Generator().manual_seed(0))
    assert {k: tuple(t.shape) for k, t in lone.upload.items()} == {fedl2g.GRADS: (0, 500), fedl2g.CLASSES: (0,)}
    assert fedl2g.check_upload(ctx, broadcast, lone.upload) is None
    state, _ = fedl2g.init_server(ctx)
    _, unchanged = fedl2g.aggregate(ctx, state, [Upload(0, lone.upload, 1.0)])
    assert torch.equal(unchanged[fedl2g.GUIDANCE], state[fedl2g.GUIDANCE])


def test_the_meta_steps_flops_are_counted_once_per_structure_and_shape(make_context, make_data, monkeypatch):
    monkeypatch.setattr(flop_count, "_DISK_ENABLED", False)
    flop_count.clear_caches()
    _, _, _, _, counted = _client(make_context, make_data, quiz_size=10)
    entered = []
    original = flop_count.counting
    monkeypatch.setattr(flop_count, "counting", lambda: entered.append(1) or original())
    _, _, _, _, cached = _client(make_context, make_data, quiz_size=10)
    assert not entered and cached.stats[1].flops == counted.stats[1].flops > 0  # the count, not a recount
    assert _same(cached.upload, counted.upload)
    _, _, _, _, other = _client(make_context, make_data, quiz_size=12)  # another quiz shape: counted anew
    assert entered and other.stats[1].flops > counted.stats[1].flops


@pytest.mark.parametrize("target, width", [("features", 500), ("logits", 10)])
def test_upload_and_broadcast_have_the_declared_shapes(target, width, make_context, make_data):
    ctx, broadcast, _, _, result = _client(make_context, make_data, target=target)
    spec = fedl2g.ALGORITHM.expected_upload(ctx, broadcast)
    assert {k: (s.shape, s.dtype, s.max_numel) for k, s in spec.items()} == {
        fedl2g.GRADS: ((None, width), torch.float32, 10 * width), fedl2g.CLASSES: ((None,), torch.int64, 10)}
    # the rows of the three classes studied (the client holds no other), nothing of the seven others
    assert {k: (tuple(t.shape), t.dtype) for k, t in result.upload.items()} == {
        fedl2g.GRADS: ((3, width), torch.float32), fedl2g.CLASSES: ((3,), torch.int64)}
    assert result.upload[fedl2g.CLASSES].tolist() == [1, 4, 7]
    assert bool(result.upload[fedl2g.GRADS].ne(0).any(1).all())
    assert {k: tuple(t.shape) for k, t in broadcast.items()} == {fedl2g.GUIDANCE: (10, width), fedl2g.ROUND: ()}
    state, _ = fedl2g.init_server(ctx)
    _, new_broadcast = fedl2g.aggregate(ctx, state, [Upload(0, result.upload, result.weight)])
    assert {k: tuple(t.shape) for k, t in new_broadcast.items()} == {k: tuple(t.shape) for k, t in broadcast.items()}


def test_server_takes_a_clipped_sgd_step_on_the_per_class_mean_gradient(make_context):
    ctx = _ctx(make_context, server_lr=0.5)
    state, broadcast = fedl2g.init_server(ctx)
    ones = torch.ones(500)
    grads_a, grads_b = torch.stack([ones, 2 * ones]), (4 * ones).unsqueeze(0)
    uploads = [Upload(0, {fedl2g.GRADS: grads_a, fedl2g.CLASSES: torch.tensor([0, 1])}, 1.0),
               Upload(1, {fedl2g.GRADS: grads_b, fedl2g.CLASSES: torch.tensor([1])}, 9.0)]
    new_state, new_broadcast = fedl2g.aggregate(ctx, state, uploads)
    mean = torch.zeros(10, 500)
    mean[0], mean[1] = ones, 3 * ones  # plain mean over the holders, whatever their weights
    assert torch.allclose(new_broadcast[fedl2g.GUIDANCE], state[fedl2g.GUIDANCE] - 0.5 * mean)
    assert float(new_broadcast[fedl2g.ROUND]) == 1 and float(new_state[fedl2g.GUIDED]) == 2
    big = [Upload(0, {fedl2g.GRADS: grads_a * 1000, fedl2g.CLASSES: torch.tensor([0, 1])}, 1.0)]
    _, clipped = fedl2g.aggregate(ctx, state, big)
    step = (state[fedl2g.GUIDANCE] - clipped[fedl2g.GUIDANCE]) / 0.5
    assert torch.allclose(torch.linalg.vector_norm(step), torch.tensor(100.0), rtol=1e-4)


def test_a_malformed_upload_is_rejected(make_context, make_data):
    ctx, broadcast, _, _, result = _client(make_context, make_data)
    upload, algorithm = result.upload, fedl2g.ALGORITHM
    spec, check = algorithm.expected_upload(ctx, broadcast), algorithm.upload_check(ctx, broadcast)
    validator = UpdateValidator(norm_factor=None)
    assert not validator.validate([Upload(0, upload, 1.0)], spec, broadcast, check).rejected
    classes = upload[fedl2g.CLASSES]
    for bad in (classes[:2], torch.tensor([1, 4, 10]), torch.tensor([-1, 4, 7]), torch.tensor([1, 7, 4]),
                torch.tensor([1, 4, 4])):  # too few, not classes of the task, not ascending, a class twice
        report = validator.validate([Upload(0, dict(upload) | {fedl2g.CLASSES: bad}, 1.0)], spec, broadcast, check)
        assert [r.reason for r in report.rejected] == ["malformed"], report.rejected
    logits_sized = dict(upload) | {fedl2g.GRADS: torch.zeros(3, 10)}
    float_classes = dict(upload) | {fedl2g.CLASSES: classes.float()}
    too_many = {fedl2g.GRADS: torch.zeros(11, 500), fedl2g.CLASSES: torch.arange(11)}
    for bad, reason in ((logits_sized, "shape"), (float_classes, "dtype"), (too_many, "oversized")):
        report = validator.validate([Upload(0, bad, 1.0)], spec, broadcast, check)
        assert [r.reason for r in report.rejected] == [reason]


def test_not_eligible_for_client_level_dp():
    from pfedlora.federation.preflight import check_run

    config = build_config({**SMALL, "algorithm": "fedl2g"})
    assert fedl2g.ALGORITHM.averages_uploads(config) is False
    assert get_algorithm("fedl2g") is fedl2g.ALGORITHM
    central = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.8}
    pytest.importorskip("dp_accounting")
    with pytest.raises(UserError, match="algorithm fedl2g is not supported"):
        check_run(build_config({**SMALL, "algorithm": "fedl2g", "privacy": central}))


@pytest.mark.parametrize("target", ["features", "logits"])
def test_cli_runs_two_rounds_on_the_bundled_digits(target, tmp_path):
    from pfedlora.cli import main

    out = tmp_path / "run"
    assert main(["run", "--set", "algorithm=fedl2g", "--set", f"fedl2g.target={target}", "--set", "rounds=2",
                 "--set", "num_clients=5", "--set", "dataset.max_train_samples=300",
                 "--set", "dataset.max_test_samples=90", "--out", str(out)]) == 0
    assert (out / "summary.json").exists()


def test_a_client_sends_only_the_studied_classes_and_the_bytes_counted_and_sent_are_theirs():
    config = build_config({**SMALL, "algorithm": "fedl2g", "rounds": 1})
    federation = Federation.build(config)
    store = ClientStore(federation)
    state, broadcast = federation.algorithm.init_server(federation.context)
    uploads = {k: fedl2g.client_update(federation.context, k, store.get(k), broadcast, federation.clients[k],
                                       torch.Generator().manual_seed(k)).upload for k in range(5)}
    for k, upload in uploads.items():
        studied = upload[fedl2g.CLASSES]
        assert 0 < studied.numel() <= 4 and set(studied.tolist()) <= set(federation.clients[k].train_y.tolist())
    _, _, result = run_round(federation, store, state, broadcast, 1)
    assert result.aggregated and not result.rejections
    # every client held 4 classes and studied a batch of 32 of its samples: all 4 (a fixed seed)
    assert result.up_bytes == 5 * 4 * (500 * 4 + 8)  # float32 rows + int64 indices
    upload = uploads[0]
    rows = int(upload[fedl2g.CLASSES].numel())
    assert transmit(upload, "bfloat16")[1] == rows * (500 * 2 + 8)
    pytest.importorskip("flwr")
    from pfedlora.federation.flower.payload import from_array_record, record_bytes, to_array_record

    record = to_array_record(upload, "float32")
    assert record_bytes(record) == rows * (500 * 4 + 8)
    assert _same(from_array_record(record), upload)


def test_the_server_step_from_studied_rows_is_the_dense_uploads_bit_for_bit(make_context):
    ctx = _ctx(make_context, server_lr=3.0)
    state, _ = fedl2g.init_server(ctx)
    g = torch.Generator().manual_seed(2)
    studied = [torch.tensor([0, 2, 5]), torch.tensor([2, 3]), torch.tensor([5, 9])]
    uploads = [Upload(k, {fedl2g.GRADS: torch.randn(len(c), 500, generator=g), fedl2g.CLASSES: c}, 1.0)
               for k, c in enumerate(studied)]
    _, broadcast = fedl2g.aggregate(ctx, state, uploads)
    # the former rule on [C, d] gradients (zero rows for classes not studied) with study-batch counts
    total, holders = torch.zeros(10, 500, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    for upload in uploads:
        grads, counts = torch.zeros(10, 500), torch.zeros(10)
        grads[upload.payload[fedl2g.CLASSES]] = upload.payload[fedl2g.GRADS]
        counts[upload.payload[fedl2g.CLASSES]] = 4.0
        present = (counts > 0).to(torch.float64)
        total += grads.to(torch.float64) * present.unsqueeze(1)
        holders += present
    gradient = (total / holders.clamp(min=1).unsqueeze(1)).to(torch.float32)
    gradient = gradient * torch.clamp(100.0 / (torch.linalg.vector_norm(gradient) + 1e-6), max=1.0)
    assert torch.equal(broadcast[fedl2g.GUIDANCE], state[fedl2g.GUIDANCE] - 3.0 * gradient)
