"""The trainable part of a bound modality: what maps its files into the shared space.

- ``Projector`` follows a frozen tower: a residual MLP on the tower's unit embedding (``dim -> hidden ->
  dim``). Its last layer starts at zero, so training starts from the tower's own answer: for a tower that
  already reads the files well (a new microphone's sounds through the audio tower) the adapter only
  corrects it.
- ``RawEncoder`` reads an array itself (``xsearch.bind.raw``): standardised with the training set's
  per-channel statistics, flattened, with three summaries per channel (mean, spread, mean absolute change:
  they say how a sensor moved wherever in the window it did), through an MLP beside a linear map (the
  bulk of a smooth map is linear; the MLP learns its bends). Sized for a CPU: 2.3M parameters for a
  6 x 100 series.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class RawEncoder(nn.Module):
    SUMMARIES = 3

    def __init__(self, channels: int, length: int, dim: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels, 1))
        self.register_buffer("std", torch.ones(channels, 1))
        inputs = channels * length + self.SUMMARIES * channels
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.linear = nn.Linear(inputs, dim)  # the linear part of the map, learned beside the MLP's bends

    def fit_statistics(self, x: torch.Tensor) -> None:
        """Per-channel mean and spread of the training inputs ``[N, channels, length]``."""
        self.mean.copy_(x.mean(dim=(0, 2))[:, None])
        self.std.copy_(x.std(dim=(0, 2)).clamp_min(1e-6)[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.float() - self.mean) / self.std
        change = z.diff(dim=-1).abs().mean(dim=-1) if z.shape[-1] > 1 else torch.zeros_like(z[..., 0])
        summaries = torch.cat([z.mean(dim=-1), z.std(dim=-1, unbiased=False), change], dim=1)
        features = torch.cat([z.flatten(1), summaries], dim=1)
        return self.linear(features) + self.net(features)


def build(shape: dict) -> nn.Module:
    """The adapter a binding's ``adapter`` record describes (its weights are loaded separately)."""
    if shape["kind"] == "projector":
        return Projector(shape["dim"], shape["hidden"])
    if shape["kind"] == "raw":
        return RawEncoder(shape["channels"], shape["length"], shape["dim"], shape["hidden"])
    raise ValueError(f"unknown adapter kind {shape['kind']!r}")


def loaded(binding, device: torch.device) -> nn.Module:
    """The binding's adapter with its stored weights, on ``device``, for inference."""
    module = build(binding.adapter)
    module.load_state_dict(binding.state_dict())
    return module.to(device).eval()
