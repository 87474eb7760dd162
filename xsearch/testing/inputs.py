"""Random model inputs of the shapes a model config names, for parity tests and speed benchmarks."""

from __future__ import annotations

import torch

from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg


def sample_inputs(batch: int, seed: int = 0, cfg: ImageBindCfg = IMAGEBIND_HUGE) -> dict[str, torch.Tensor]:
    """One batch per tower, keyed by tower name; texts end (token 49407) at different positions, zero
    padding after the end token, as the CLIP tokenizer makes them."""
    g = torch.Generator().manual_seed(seed)
    size, length = cfg.image_size, cfg.context_length
    text = torch.randint(1, cfg.vocab_size - 2, (batch, length), generator=g)
    for row in range(batch):
        end = 5 + 7 * row
        text[row, 0], text[row, end], text[row, end + 1 :] = cfg.vocab_size - 2, cfg.vocab_size - 1, 0
    return {
        "vision": torch.randn(batch, 3, size, size, generator=g),
        "text": text,
        "audio": torch.randn(batch, 3, 1, cfg.audio_mel_bins, cfg.audio_target_len, generator=g),
        "depth": torch.randn(batch, 1, size, size, generator=g),
        "thermal": torch.randn(batch, 1, size, size, generator=g),
        "imu": torch.randn(batch, cfg.imu_channels, cfg.imu_length, generator=g),
    }
