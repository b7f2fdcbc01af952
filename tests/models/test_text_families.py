"""The text members of the HtFE-txt-* families (fastText, text LR, LSTM, BiLSTM, GRU, Transformers)."""

import pytest
import torch
from family_checks import check_member, linear, norm

from pfedlora.data.text import TextSpec

VOCAB, LENGTH, H = 1000, 12, 64  # a small vocabulary and width keep the test cheap; the formulas hold for any
TEXT = TextSpec(vocab_size=VOCAB, max_length=LENGTH, pad_id=0)
IDS = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0], list(range(10, 22))])
HEAD = linear(H, 4)


def lstm_layer(cin: int, h: int) -> int:
    return 4 * h * cin + 4 * h * h + 8 * h


def gru_layer(cin: int, h: int) -> int:
    return 3 * h * cin + 3 * h * h + 6 * h


def encoder_layer(h: int) -> int:  # self-attention, feed-forward 2,048, two LayerNorms
    return (3 * h * h + 3 * h) + linear(h, h) + linear(h, 2048) + linear(2048, h) + 2 * norm(h)


EXPECTED = {
    "fasttext": VOCAB * H + linear(H, H),
    "text_lr": VOCAB * H,
    "lstm": VOCAB * H + 2 * lstm_layer(H, H),
    "gru": VOCAB * H + 2 * gru_layer(H, H),
    "bilstm": VOCAB * H + 2 * lstm_layer(H, H) + linear(2 * H, H),
    "transformer_l2_h8": VOCAB * H + 2 * encoder_layer(H),
    "transformer_l1_h1": VOCAB * H + encoder_layer(H),
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_member(arch):
    check_member(f"htfl_{arch}_f{H}", IDS, 4, EXPECTED[arch] + HEAD, feature_dim=H, text=TEXT, placement="head")


def test_padding_does_not_change_a_representation():
    from pfedlora.models.registry import build_model

    torch.manual_seed(0)
    for arch in ("fasttext", "lstm", "gru", "bilstm", "transformer_l2_h8"):
        model = build_model(f"htfl_{arch}_f{H}", 0, 4, 0, text=TEXT).eval()
        short = torch.tensor([[5, 6, 7, 0, 0, 0]])
        longer_pad = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
        with torch.no_grad():
            assert torch.allclose(model.represent(short), model.represent(longer_pad), atol=1e-5), arch
