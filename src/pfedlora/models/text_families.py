"""The text models of HtFLlib's ``HtFE-txt-*`` families (``system/flcore/trainmodel/models.py``,
``bilstm.py``, ``transformer.py``), every width ``hidden`` = the family's ``feature_dim``:

* ``fasttext`` (Joulin et al., 2017): embedding (vocab x h, pad row) -> mean over tokens -> Linear(h, h).
* ``text_lr``: embedding (vocab x h) -> mean over tokens (text logistic regression: the head is the model).
* ``lstm``: embedding (pad row) -> 2-layer LSTM(h, h), dropout 0.2 between layers -> the last token's
  output -> ReLU -> dropout 0.2.
* ``gru``: embedding (pad row) -> 2-layer GRU(h, h), dropout 0.2 -> the top layer's last hidden
  state -> dropout 0.2.
* ``bilstm``: embedding -> 1-layer bidirectional LSTM(h, h) -> the last token's output (2h) ->
  Linear(2h, h). HtFLlib's family builds it without attention (``attention=False``, its default), so
  does this one.
* ``transformer_l{L}_h{H}``: embedding x sqrt(h) + sinusoidal positions -> dropout 0.1 -> L post-norm
  encoder layers (H heads, feed-forward 2,048, dropout 0.1, ReLU) -> the first token's output.

Each final Linear (h -> classes) is replaced by the family split (:mod:`pfedlora.models.split`).
Differences from the reference, none of them in the parameters: the pad token (``TextSpec.pad_id``)
is left out of means, recurrent models read each text's last real token (HtFLlib, given a plain
tensor, reads the last position, usually padding), and the transformer masks padding keys.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from pfedlora.data.text import TextSpec
from pfedlora.models.split import SplitModel, linear_head

RECURRENT_DROPOUT = 0.2
TRANSFORMER_FF, TRANSFORMER_DROPOUT = 2048, 0.1
TRANSFORMER_NAME = re.compile(r"transformer_l(\d+)_h(\d+)")


def _lengths(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    return (ids != pad_id).sum(1).clamp(min=1)


def _masked_mean(embedded: torch.Tensor, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    mask = (ids != pad_id).unsqueeze(-1).to(embedded.dtype)
    return (embedded * mask).sum(1) / mask.sum(1).clamp(min=1)


def _last_real(outputs: torch.Tensor, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """outputs [B, L, D] at each row's last non-pad position."""
    index = (_lengths(ids, pad_id) - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])
    return outputs.gather(1, index).squeeze(1)


class FastText(nn.Module):
    def __init__(self, text: TextSpec, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(text.vocab_size, hidden, padding_idx=text.pad_id)
        self.fc1 = nn.Linear(hidden, hidden)
        self.pad_id = text.pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc1(_masked_mean(self.embedding(ids), ids, self.pad_id))


class TextLogisticRegression(nn.Module):
    def __init__(self, text: TextSpec, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(text.vocab_size, hidden)
        self.pad_id = text.pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _masked_mean(self.embedding(ids), ids, self.pad_id)


class RecurrentNet(nn.Module):
    """``lstm`` and ``gru`` (2 layers), ``bilstm`` (1 bidirectional layer -> Linear(2h, h))."""

    def __init__(self, kind: str, text: TextSpec, hidden: int) -> None:
        super().__init__()
        self.kind, self.pad_id = kind, text.pad_id
        if kind == "bilstm":
            self.embedding = nn.Embedding(text.vocab_size, hidden)
            self.rnn: nn.RNNBase = nn.LSTM(hidden, hidden, 1, bidirectional=True, batch_first=True)
            self.fc1 = nn.Linear(2 * hidden, hidden)
        else:
            self.embedding = nn.Embedding(text.vocab_size, hidden, padding_idx=text.pad_id)
            cell = nn.LSTM if kind == "lstm" else nn.GRU
            self.rnn = cell(hidden, hidden, 2, dropout=RECURRENT_DROPOUT, batch_first=True)
            self.dropout = nn.Dropout(RECURRENT_DROPOUT)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = _lengths(ids, self.pad_id).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        packed_out, state = self.rnn(packed)
        if self.kind == "gru":
            return self.dropout(state[-1])  # the top layer's last hidden state
        outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True, total_length=ids.shape[1])
        last = _last_real(outputs, ids, self.pad_id)
        return self.fc1(last) if self.kind == "bilstm" else self.dropout(torch.relu(last))


class EncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(h, heads, 2048, 0.1, batch_first=True)`` (post-norm, ReLU), with the same
    parameters, written out so that its attention runs as the matrix products the FLOP counter sees
    (torch's fused inference path hides them)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(hidden, 3 * hidden)  # query, key, value
        self.out_proj = nn.Linear(hidden, hidden)
        self.linear1 = nn.Linear(hidden, TRANSFORMER_FF)
        self.linear2 = nn.Linear(TRANSFORMER_FF, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(TRANSFORMER_DROPOUT)
        nn.init.xavier_uniform_(self.in_proj.weight)  # as nn.MultiheadAttention
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def attention(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.in_proj(x).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(width // self.heads)
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        out = self.dropout(torch.softmax(scores, dim=-1)) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, length, width))

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, padding)))
        return self.norm2(x + self.dropout(self.linear2(self.dropout(torch.relu(self.linear1(x))))))


class TransformerNet(nn.Module):
    def __init__(self, text: TextSpec, hidden: int, layers: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"transformer width {hidden} is not divisible by {heads} heads")
        self.embedding = nn.Embedding(text.vocab_size, hidden)
        position = torch.arange(text.max_length).unsqueeze(1)
        scale = torch.exp(torch.arange(0, hidden, 2) * (-math.log(10000.0) / hidden))
        table = torch.zeros(1, text.max_length, hidden)
        table[0, :, 0::2] = torch.sin(position * scale)
        table[0, :, 1::2] = torch.cos(position * scale)
        self.register_buffer("positions", table, persistent=False)  # a function of the shape: not state
        self.dropout = nn.Dropout(TRANSFORMER_DROPOUT)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads) for _ in range(layers))
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        self.hidden, self.pad_id = hidden, text.pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(ids) * math.sqrt(self.hidden) + self.positions[:, : ids.shape[1]])
        padding = ids == self.pad_id
        padding[:, 0] = False  # the first token is read out: it always attends and is attended to
        for layer in self.layers:
            x = layer(x, padding)
        return x[:, 0]


def text_base(name: str, text: TextSpec, hidden: int) -> nn.Module:
    if name == "fasttext":
        return FastText(text, hidden)
    if name == "text_lr":
        return TextLogisticRegression(text, hidden)
    if name in ("lstm", "gru", "bilstm"):
        return RecurrentNet(name, text, hidden)
    match = TRANSFORMER_NAME.fullmatch(name)
    if match is None:
        raise KeyError(f"unknown text family model {name!r}")
    return TransformerNet(text, hidden, int(match.group(1)), int(match.group(2)))


def text_model(name: str, text: TextSpec, num_classes: int, feature_dim: int = 512,
               head_hidden: int | None = None) -> SplitModel:
    """HtFLlib builds every text model at width ``feature_dim``, so no pooling happens."""
    return SplitModel(text_base(name, text, feature_dim), feature_dim, linear_head(feature_dim, num_classes, head_hidden))
