"""Engine speed options change how, never what: workers, the disk client store, frozen-output reuse,
and augmentation through the simulator."""

import dataclasses

import pytest
import torch

from pfedlora.config import build_config
from pfedlora.federation.simulation import ClientStore, Federation, evaluate_clients, resume, run, run_round

# two of four clients per round, small data: the options under test do not need more
TINY = {"num_clients": 4, "fraction": 0.5, "model_pool": ["cnn5", "cnn4"], "train": {"batch_size": 32},
        "dataset": {"max_train_samples": 600, "max_test_samples": 200}, "partition": {"min_samples": 5, "classes_per_client": 3}}


def _rounds(overrides: dict, rounds: int = 2):
    config = build_config({**TINY, **overrides})
    federation = Federation.build(config)
    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    for round_index in range(1, rounds + 1):
        server_state, broadcast, result = run_round(federation, store, server_state, broadcast, round_index)
    return broadcast, evaluate_clients(federation, store, broadcast), result.train_loss


def _close(a: dict, b: dict, exact: bool = False):
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_two_workers_match_in_process_and_repeat_exactly():
    one = _rounds({"engine": {"workers": 1}})
    two = _rounds({"engine": {"workers": 2}})
    again = _rounds({"engine": {"workers": 2}})
    _close(one[0], two[0])
    assert max(abs(a - b) for a, b in zip(one[1], two[1])) < 1e-6
    _close(two[0], again[0], exact=True)
    assert two[1:] == again[1:]


def test_frozen_output_reuse_gives_the_same_federation_for_both_placements():
    for adapter in ({"placement": "branch"}, {"placement": "head", "construction": "factorized"}):
        train = {**TINY["train"], "adapter_epochs": 2}  # the frozen local model's outputs serve two epochs
        reused = _rounds({"adapter": adapter, "train": train, "engine": {"reuse_frozen": True}}, rounds=1)
        plain = _rounds({"adapter": adapter, "train": train, "engine": {"reuse_frozen": False}}, rounds=1)
        _close(reused[0], plain[0])
        assert reused[1] == plain[1]
        assert abs(reused[2] - plain[2]) < 1e-5


def test_disk_store_round_trip_atomic_files_and_same_results(tmp_path):
    config = build_config({**TINY, "engine": {"client_store": "disk", "store_dir": str(tmp_path / "store")}})
    federation = Federation.build(config)
    store = ClientStore(federation)
    state = store.get(3)  # never updated: the initial state, nothing written
    assert not list((tmp_path / "store").iterdir())
    changed = {name: tensor + 1 for name, tensor in state.items()}
    store.put(3, changed)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["client-3.pt"]
    for name, tensor in store.get(3).items():
        assert torch.equal(tensor, changed[name])
    assert list(store.states()) == [3]
    assert _rounds({"engine": {"client_store": "disk"}})[1] == _rounds({})[1]


def test_checkpoint_and_resume_with_the_disk_store(tmp_path, interrupted_run):
    config = build_config({**TINY, "rounds": 2, "engine": {"client_store": "disk"}})
    whole = run(config, tmp_path / "whole", log=lambda _: None)

    interrupted_run(config, tmp_path / "part", at_round=2)  # after round 1's checkpoint
    resumed = resume(tmp_path / "part", log=lambda _: None)
    assert resumed["client_accuracies"] == whole["client_accuracies"]


def test_augmentation_changes_training_deterministically():
    plain = _rounds({}, rounds=1)
    augment = {"dataset": {**TINY["dataset"], "augment": True}}
    augmented = _rounds(augment, rounds=1)
    again = _rounds(augment, rounds=1)
    assert augmented[2] != plain[2]
    _close(augmented[0], again[0], exact=True)
    assert augmented[1:] == again[1:]


def test_workers_take_the_largest_clients_first():
    from pfedlora.federation.simulation import _client_work

    federation = Federation.build(build_config({**TINY, "model_pool": ["cnn1", "cnn5"]}))
    work = {k: _client_work(federation, k) for k in range(4)}
    sizes = {k: federation.clients[k].num_train for k in range(4)}
    # same model (clients 0, 2 are cnn1): work is proportional to the data size; cnn1 costs more per sample than cnn5
    assert work[0] * sizes[2] == work[2] * sizes[0]
    assert work[0] / sizes[0] > work[1] / sizes[1]


def test_clients_are_evaluated_in_the_workers_on_cpu_and_in_process_on_an_accelerator(monkeypatch):
    import os
    from types import SimpleNamespace

    from pfedlora.federation import simulation

    federation = Federation.build(build_config({**TINY, "engine": {"workers": 2}}))
    where = {}
    original = federation.algorithm.personalized_model

    def recorded(ctx, client_id, state, broadcast):
        where[client_id] = os.getpid()
        return original(ctx, client_id, state, broadcast)

    # the evaluation runs in forked workers: what they record stays there, so they return it instead
    monkeypatch.setattr(simulation, "accuracy", lambda model, *a, **k: float(where[max(where)]))
    federation.algorithm = dataclasses.replace(federation.algorithm, personalized_model=recorded)
    store = ClientStore(federation)
    _, broadcast = federation.algorithm.init_server(federation.context)
    pids = evaluate_clients(federation, store, broadcast)
    assert os.getpid() not in pids  # (how the clients fall to the two workers is up to the scheduler)
    accelerator = SimpleNamespace(context=SimpleNamespace(device=torch.device("meta")), config=federation.config)
    assert set(simulation.map_clients(accelerator, lambda k: os.getpid(), [0, 1, 2], work=lambda k: k).values()) \
        == {os.getpid()}


def _die_on_two(item):
    import os
    import signal

    if item == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # as when SIGTERM reaches the whole process group
    return item * 10


def test_a_worker_killed_by_a_signal_is_an_error_not_a_hang():
    from pfedlora.federation.parallel import WorkerDied, map_forked

    assert map_forked(_die_on_two, [0, 1, 3], workers=2) == [0, 10, 30]
    with pytest.raises(WorkerDied, match="worker process ended"):
        map_forked(_die_on_two, [0, 1, 2, 3], workers=2)
