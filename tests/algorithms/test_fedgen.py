"""FedGen: generated representations are its federated term; the server trains the generator.

"Federated term at zero" is ``fedgen.generative_weight = 0``. With ``header: local`` (the variant
of the results published before 2026-12-07) a client then trains on its own data alone, so its
local models must equal Standalone's bit for bit; with the default ``header: global`` (the paper's
shared predictor, as HtFLlib) the averaged header is then the only channel, so the run must equal
LG-FedAvg's evaluated with the global header bit for bit. At the paper's weight 1 every client's
local model must differ from both (the generator, trained after round 1, regularises every header
in round 2).
"""

import pytest
import torch

from pfedlora.algorithms import get_algorithm
from pfedlora.algorithms.base import ClientData, FederationContext, Upload, unprefixed
from pfedlora.algorithms.fedgen import COUNTS, GENERATOR, PRIOR
from pfedlora.config import build_config
from pfedlora.federation.simulation import ClientStore, Federation, evaluate_clients, run_round
from pfedlora.registry import with_former_defaults
from pfedlora.federation.validation import UpdateValidator
from pfedlora.metrics.flops import count_server_flops

SMALL = {"num_clients": 5, "rounds": 2, "partition": {"classes_per_client": 4},
         "dataset": {"max_train_samples": 500, "max_test_samples": 200},
         "train": {"batch_size": 32, "lr": 0.05}, "validation": {"norm_factor": None}}


def _run(algorithm: str, overrides: list[str] = ()):
    """(each client's local model, the final broadcast, the clients' evaluation) after SMALL's rounds."""
    config = build_config({**SMALL, "algorithm": algorithm}, list(overrides))
    federation = Federation.build(config)
    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    for round_index in range(1, config.rounds + 1):
        server_state, broadcast, _ = run_round(federation, store, server_state, broadcast, round_index)
    models = [unprefixed("local_model.", store.get(k)) for k in range(config.num_clients)]
    return models, broadcast, evaluate_clients(federation, store, broadcast)


def _local_models(algorithm: str, overrides: list[str] = ()) -> list[dict[str, torch.Tensor]]:
    return _run(algorithm, overrides)[0]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def standalone():
    return _local_models("standalone")


def test_the_default_header_is_the_papers_shared_predictor_and_older_configs_read_as_local():
    config = build_config({"algorithm": "fedgen"})
    assert config.fedgen.header == "global"
    written = config.to_dict()
    del written["fedgen"]["header"]  # a run config written before the key existed
    assert build_config(with_former_defaults(written)).fedgen.header == "local"


@pytest.mark.parametrize("header", ["local", "global"])
def test_generated_representations_change_every_clients_local_model(header, standalone):
    models = _local_models("fedgen", ["fedgen.server_steps=20", f"fedgen.header={header}"])
    assert all(not _same(mine, alone) for mine, alone in zip(models, standalone))


def test_with_the_generative_weight_at_zero_the_local_header_variant_is_standalone_bit_for_bit(standalone):
    models = _local_models("fedgen", ["fedgen.generative_weight=0", "fedgen.server_steps=20", "fedgen.header=local"])
    assert all(_same(mine, alone) for mine, alone in zip(models, standalone))


def test_with_the_generative_weight_at_zero_the_default_is_lg_fedavg_with_the_global_header_bit_for_bit():
    models, broadcast, evaluation = _run("fedgen", ["fedgen.generative_weight=0", "fedgen.server_steps=20"])
    lg_models, lg_broadcast, lg_evaluation = _run("lg_fedavg", ["lg_fedavg.evaluation=global_header"])
    assert all(_same(mine, theirs) for mine, theirs in zip(models, lg_models))
    assert _same(unprefixed("head.", broadcast), lg_broadcast)  # the averaged header is LG-FedAvg's
    assert evaluation == lg_evaluation
    # with the generator's term on, the same run is another one
    generated, _, _ = _run("fedgen", ["fedgen.server_steps=20"])
    assert all(not _same(mine, theirs) for mine, theirs in zip(generated, lg_models))


def _context(**fedgen) -> FederationContext:
    config = build_config({"algorithm": "fedgen", "num_clients": 2, "model_pool": ["cnn4", "cnn5"],
                           "train": {"batch_size": 16, "lr": 0.05}, "fedgen": {"server_steps": 10, **fedgen}})
    return FederationContext(config, (1, 32, 32), 10, torch.device("cpu"))


def _data(seed: int = 0, n: int = 48, classes: int = 10) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g)
    return ClientData(x, y, x[:8], y[:8])


def _round(ctx, server_state, broadcast):
    method = get_algorithm("fedgen")
    uploads, results = [], []
    for k in range(2):
        result = method.client_update(ctx, k, method.init_client(ctx, k), broadcast, _data(seed=k, classes=6 + 2 * k),
                                      torch.Generator().manual_seed(k))
        uploads.append(Upload(k, result.upload, result.weight))
        results.append(result)
    (server_state, new_broadcast), flops = count_server_flops(method.aggregate, ctx, server_state, uploads)
    return server_state, new_broadcast, uploads, results, flops


def test_uploads_broadcasts_and_the_servers_generator_training():
    ctx = _context()
    method = get_algorithm("fedgen")
    server_state, broadcast = method.init_server(ctx)
    assert broadcast[f"{GENERATOR}out.weight"].shape == (500, 512)  # generates 500-d representations
    assert torch.equal(broadcast[PRIOR], torch.zeros(10))  # no generator trained yet
    server_state, new, uploads, _, flops = _round(ctx, server_state, broadcast)
    spec = method.expected_upload(ctx, broadcast)
    assert {k: s.shape for k, s in spec.items()} == {"head.weight": (10, 500), "head.bias": (10,), COUNTS: (10,)}
    report = UpdateValidator(norm_factor=None).validate(uploads, spec, broadcast, method.upload_check(ctx, broadcast))
    assert not report.rejected
    # the prior is the summed label counts; the generator's weights were trained; server FLOPs counted
    assert torch.equal(new[PRIOR], uploads[0].payload[COUNTS] + uploads[1].payload[COUNTS])
    assert set(new) == set(broadcast)
    assert not torch.equal(new[f"{GENERATOR}out.weight"], broadcast[f"{GENERATOR}out.weight"])
    assert flops > 10 * 32 * 2 * 512 * 500  # at least the generator's output layer, forward, 10 steps
    assert method.server_metrics(ctx, server_state)["generator_loss"] > 0
    # not an average of the uploads: no client-level DP or SecAgg+
    assert not method.averages_uploads(ctx.config)
    # no uploads: nothing changes
    kept_state, kept = method.aggregate(ctx, server_state, [])
    assert _same(kept, new)


def test_malformed_label_counts_are_rejected():
    ctx = _context()
    method = get_algorithm("fedgen")
    _, broadcast = method.init_server(ctx)
    result = method.client_update(ctx, 0, method.init_client(ctx, 0), broadcast, _data(), torch.Generator().manual_seed(0))
    spec, check = method.expected_upload(ctx, broadcast), method.upload_check(ctx, broadcast)
    for counts in (torch.full((10,), -1.0), torch.full((10,), 0.5)):
        bad = Upload(0, result.upload | {COUNTS: counts}, 1.0)
        report = UpdateValidator(norm_factor=None).validate([bad], spec, broadcast, check)
        assert [r.reason for r in report.rejected] == ["malformed"]
    wrong_dim = Upload(0, result.upload | {"head.weight": torch.zeros(10, 64)}, 1.0)
    assert [r.reason for r in UpdateValidator(norm_factor=None).validate([wrong_dim], spec, broadcast, check).rejected] == ["shape"]


def test_before_any_generator_training_a_client_trains_as_in_standalone():
    ctx = _context(header="local")
    method, alone = get_algorithm("fedgen"), get_algorithm("standalone")
    _, broadcast = method.init_server(ctx)
    state = method.init_client(ctx, 0)
    mine = method.client_update(ctx, 0, state, broadcast, _data(), torch.Generator().manual_seed(3)).state
    expected = alone.client_update(ctx, 0, state, {}, _data(), torch.Generator().manual_seed(3)).state
    assert _same(mine, expected)


def test_the_generator_regularises_the_header_after_the_first_round():
    ctx = _context(header="local")
    method, alone = get_algorithm("fedgen"), get_algorithm("standalone")
    server_state, broadcast = method.init_server(ctx)
    _, trained, _, _, _ = _round(ctx, server_state, broadcast)
    state = method.init_client(ctx, 0)
    mine = method.client_update(ctx, 0, state, trained, _data(), torch.Generator().manual_seed(3))
    expected = alone.client_update(ctx, 0, state, {}, _data(), torch.Generator().manual_seed(3))
    assert not _same(mine.state, expected.state)
    assert mine.stats[0].flops > expected.stats[0].flops  # the generator's forward and the header's extra pass


def test_header_global_averages_and_loads_the_uploaded_headers():
    ctx = _context(header="global")
    method = get_algorithm("fedgen")
    server_state, broadcast = method.init_server(ctx)
    assert broadcast["head.weight"].shape == (10, 500)
    _, new, uploads, _, _ = _round(ctx, server_state, broadcast)
    total = sum(u.weight for u in uploads)
    mean = sum(u.payload["head.weight"] * u.weight for u in uploads) / total
    assert torch.allclose(new["head.weight"], mean, atol=1e-6)
    model = method.personalized_model(ctx, 0, method.init_client(ctx, 0), new)
    assert torch.equal(model.head.weight, new["head.weight"])
