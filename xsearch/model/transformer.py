"""The transformer trunk shared by all six towers.

Parameter names follow ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``bias_k``, ``bias_v``,
``out_proj``) and the official block layout (``norm_1``, ``attn``, ``norm_2``, ``mlp.fc1``, ``mlp.fc2``), so
the official state_dict loads unchanged, while the attention itself runs through
``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xsearch.model.config import TransformerCfg

LAYER_NORM_EPS = 1e-6


class SelfAttention(nn.Module):
    """Multi-head self-attention on batch-first tokens ``[B, L, D]``.

    With ``add_bias_kv`` a learned key and value are appended to every sequence (one extra token that
    every query can attend to), exactly as ``nn.MultiheadAttention(add_bias_kv=True)`` does.
    """

    def __init__(self, width: int, heads: int, add_bias_kv: bool = False, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.zeros(1, 1, width))
            self.bias_v = nn.Parameter(torch.zeros(1, 1, width))
        else:
            self.register_parameter("bias_k", None)
            self.register_parameter("bias_v", None)
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        if add_bias_kv:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, width)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, width)], dim=1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm_1(x))``, then ``x + mlp(norm_2(x))``."""

    def __init__(self, cfg: TransformerCfg):
        super().__init__()
        self.attn = SelfAttention(cfg.width, cfg.heads, cfg.add_bias_kv, cfg.causal)
        self.norm_1 = nn.LayerNorm(cfg.width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(cfg.width, cfg.width * cfg.mlp_ratio)
        self.norm_2 = nn.LayerNorm(cfg.width, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class Transformer(nn.Module):
    """A tower's trunk. ``pre_transformer_layer.0`` is a LayerNorm for vision, an Identity elsewhere."""

    def __init__(self, cfg: TransformerCfg):
        super().__init__()
        pre_norm = nn.LayerNorm(cfg.width, eps=LAYER_NORM_EPS) if cfg.pre_norm else nn.Identity()
        self.pre_transformer_layer = nn.Sequential(pre_norm)
        self.blocks = nn.Sequential(*(Block(cfg) for _ in range(cfg.layers)))
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pre_transformer_layer(tokens))
