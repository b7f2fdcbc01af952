"""ViT-B/16 and ViT-B/32 (Dosovitskiy et al., ICLR 2021) with torchvision's layer shapes
(``torchvision.models.vit_b_16(image_size=32)`` / ``vit_b_32(image_size=32)``), as HtFLlib's
``HtM-img-10`` family uses them on 32x32 images.

Patch embedding: a ``patch x patch`` conv with stride ``patch`` (768 channels, with bias); a learnt
class token; learnt position embeddings for (image / patch)^2 + 1 tokens (5 for B/16, 2 for B/32 at
32x32); 12 pre-norm encoder blocks (LayerNorm eps 1e-6 -> 12-head self-attention -> residual;
LayerNorm -> Linear 768->3072 -> GELU -> Linear 3072->768 -> residual), no dropout; a final LayerNorm;
the class token's 768-d output is the feature. The ``heads`` are replaced by the family split with
HtFLlib's ViT head ``Linear(feature_dim, 768) -> Tanh -> Linear(768, classes)``
(:mod:`pfedlora.models.split`). Initialisation as torchvision: patch conv truncated normal
(std sqrt(1/fan_in)), zero bias; class token zero; position embeddings normal (std 0.02); MLP
linears Xavier-uniform with normal (std 1e-6) biases.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pfedlora.models.split import SplitModel

WIDTH, DEPTH, HEADS, MLP_WIDTH = 768, 12, 12, 3072


class EncoderBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.ln_2 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, MLP_WIDTH), nn.GELU(), nn.Linear(MLP_WIDTH, WIDTH))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.self_attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViTFeatures(nn.Module):
    """[B, C, S, S] -> [B, 768] (the class token after the final LayerNorm)."""

    def __init__(self, patch: int, image_size: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ViT-B/{patch} needs an image size divisible by {patch}, got {image_size}")
        self.conv_proj = nn.Conv2d(in_channels, WIDTH, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embedding = nn.Parameter(torch.empty(1, (image_size // patch) ** 2 + 1, WIDTH).normal_(std=0.02))
        self.layers = nn.Sequential(*(EncoderBlock() for _ in range(DEPTH)))
        self.ln = nn.LayerNorm(WIDTH, eps=1e-6)
        self.out_features = WIDTH
        fan_in = in_channels * patch * patch
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)  # [B, patches, 768]
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.ln(self.layers(tokens + self.pos_embedding))[:, 0]


def vit_head(feature_dim: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(feature_dim, WIDTH), nn.Tanh(), nn.Linear(WIDTH, num_classes))


def vit(patch: int, in_channels: int, num_classes: int, image_size: int = 32, feature_dim: int = 512) -> SplitModel:
    return SplitModel(ViTFeatures(patch, image_size, in_channels), feature_dim, vit_head(feature_dim, num_classes))
