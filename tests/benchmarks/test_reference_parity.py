"""The fast engine and the plain sequential reference loop give the same federation."""

import sys
from pathlib import Path

import pytest
import torch

from pfedlora.config import build_config
from pfedlora.federation.simulation import ClientStore, Federation, evaluate_clients, run_round

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from reference import ReferenceFederation  # noqa: E402


@pytest.mark.parametrize("overrides", [{}, {"adapter": {"construction": "factorized", "placement": "head"}}])
def test_engine_matches_reference_loop_after_fixed_rounds(overrides):
    config = build_config({"num_clients": 6, "fraction": 0.5, "rounds": 2, "model_pool": ["cnn4", "cnn5"],
                           "train": {"batch_size": 32, "adapter_epochs": 2}, **overrides})
    federation = Federation.build(config)
    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    reference = ReferenceFederation(Federation.build(config))
    for round_index in (1, 2):
        server_state, broadcast, _ = run_round(federation, store, server_state, broadcast, round_index)
        reference.round(round_index)
    for name, tensor in reference.global_adapter.state_dict().items():
        torch.testing.assert_close(broadcast[name], tensor, rtol=1e-4, atol=1e-5)
    engine_acc = evaluate_clients(federation, store, broadcast)
    assert engine_acc == pytest.approx(reference.evaluate(), abs=1e-6)
