"""Per-tower stems, heads and postprocessors.

A stem turns model input into tokens (patch projection, CLS token, positional embedding); a head pools
the trunk's output (CLS token, or the end-of-text token) and projects it into the shared space; a
postprocessor L2-normalises and applies the tower's logit scale. Attribute names match the official
checkpoint (``rgbt_stem.proj.1``, ``pos_embedding_helper.pos_embed``, ``modality_heads.imu.3`` ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xsearch.model.transformer import LAYER_NORM_EPS


class RepeatFrames(nn.Module):
    """``[B, C, H, W]`` images -> ``[B, C, T, H, W]`` clips by repeating the frame ``frames`` times."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.frames, -1, -1)
        return x


class PatchEmbed(nn.Module):
    """A convolutional patch projection, flattened to tokens, with an optional LayerNorm."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None):
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_layer(self.proj(x).flatten(2).transpose(1, 2))


class PositionalEmbedding(nn.Module):
    def __init__(self, num_tokens: int, width: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, width) * width**-0.5)


class PatchTokenizer(nn.Module):
    """Patch tokens + a learned CLS token + learned positional embeddings.

    ``stem_name`` is the checkpoint's attribute name for the patch projection (``rgbt_stem`` for vision,
    audio and thermal, ``depth_stem`` for depth).
    """

    def __init__(self, stem_name: str, stem: PatchEmbed, num_patches: int, width: int):
        super().__init__()
        self.stem_name = stem_name
        self.add_module(stem_name, stem)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.pos_embedding_helper = PositionalEmbedding(num_patches + 1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = getattr(self, self.stem_name)(x)
        expected = self.pos_embedding_helper.pos_embed.shape[1] - 1
        if tokens.shape[1] != expected:
            raise ValueError(f"input of shape {tuple(x.shape)} gives {tokens.shape[1]} patches, expected {expected}")
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embedding_helper.pos_embed


class TextTokenizer(nn.Module):
    """Token ids ``[B, 77]`` -> token embeddings + positions. The causal mask is kept as the checkpoint's
    ``mask`` buffer for loading; attention applies causality itself."""

    def __init__(self, vocab_size: int, context_length: int, width: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.randn(1, context_length, width) * 0.01)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.register_buffer("mask", torch.full((context_length, context_length), float("-inf")).triu_(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.pos_embed


class ImuTokenizer(nn.Module):
    """IMU ``[B, 6, 2000]`` -> 250 windows of 6 x 8 samples, projected, with CLS and positions."""

    def __init__(self, channels: int, length: int, window: int, width: int):
        super().__init__()
        self.window = window
        self.imu_stem = PatchEmbed(nn.Linear(channels * window, width, bias=False), nn.LayerNorm(width))
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, length // window + 1, width) * 0.01)

    def forward(self, imu: torch.Tensor) -> torch.Tensor:
        windows = imu.unfold(-1, self.window, self.window).permute(0, 2, 1, 3).flatten(2)
        tokens = self.imu_stem.norm_layer(self.imu_stem.proj(windows))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embed


class SelectToken(nn.Module):
    """Pick one token (the CLS token at index 0) from ``[B, L, D]``."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


def cls_head(width: int, embed_dim: int, *, imu: bool = False) -> nn.Sequential:
    """LayerNorm -> CLS token -> Linear. IMU's official head has a dropout at index 2 (identity here)."""
    layers = [nn.LayerNorm(width, eps=LAYER_NORM_EPS), SelectToken(0)]
    if imu:
        layers.append(nn.Identity())
    layers.append(nn.Linear(width, embed_dim, bias=False))
    return nn.Sequential(*layers)


class TextHead(nn.Module):
    """Pool at the end-of-text token (the highest id in each row), then LayerNorm -> Linear."""

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(width, eps=LAYER_NORM_EPS), nn.Linear(width, embed_dim, bias=False))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        eos = ids.argmax(dim=-1)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eos])


class L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class LogitScale(nn.Module):
    """Multiply by ``min(exp(log_logit_scale), 100)``; learned for text, a fixed buffer elsewhere."""

    def __init__(self, init: float, learnable: bool, max_scale: float = 100.0):
        super().__init__()
        self.max_scale = max_scale
        value = torch.tensor(math.log(init))
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_scale) * x


def postprocessor(logit_scale: float | None, learnable: bool = False) -> nn.Module:
    if logit_scale is None:
        return L2Normalize()
    return nn.Sequential(L2Normalize(), LogitScale(logit_scale, learnable))
