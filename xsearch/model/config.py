"""Architecture configs for ImageBind.

Frozen dataclasses only: a config says what to build, the builders in ``imagebind.py`` build it. The
official sizes are ``IMAGEBIND_HUGE``; ``TINY_TEST`` keeps every shape that the preprocessing and the store
see (224 px, 77 tokens, 128x204 fbank, 6x2000 IMU, 1024-d output) and shrinks only the transformers, so that
tests run the real code paths in seconds. ``TINY_TEST`` is for tests only and is never a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from xsearch.errors import UsageError
from xsearch.modalities import Tower


@dataclass(frozen=True)
class TransformerCfg:
    """One tower's trunk: a stack of pre-norm blocks."""

    width: int
    layers: int
    heads: int
    mlp_ratio: int = 4
    add_bias_kv: bool = False  # learned extra key/value token (audio, depth, thermal, IMU)
    pre_norm: bool = False  # LayerNorm on the tokens before the first block (vision)
    causal: bool = False  # causal self-attention (text)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.causal and self.add_bias_kv:
            raise ValueError("causal attention with an extra bias key/value token is not supported")


@dataclass(frozen=True)
class ImageBindCfg:
    """The whole model: six towers mapping into one ``embed_dim`` space."""

    name: str
    vision: TransformerCfg
    text: TransformerCfg
    audio: TransformerCfg
    depth: TransformerCfg
    thermal: TransformerCfg
    imu: TransformerCfg
    embed_dim: int = 1024
    # Vision: an image is a 2-frame clip; patches are 2 x 14 x 14.
    image_size: int = 224
    vision_patch: tuple[int, int, int] = (2, 14, 14)
    video_frames: int = 2
    # Text: CLIP BPE.
    context_length: int = 77
    vocab_size: int = 49408
    # Audio: a 1 x mel_bins x target_len fbank "image", 16 x 16 patches with stride 10.
    audio_mel_bins: int = 128
    audio_target_len: int = 204
    audio_patch: int = 16
    audio_stride: int = 10
    # Depth and thermal: 1 x 224 x 224, 16 x 16 patches.
    depth_patch: int = 16
    thermal_patch: int = 16
    # IMU: 6 channels x 2000 samples cut into windows of 8.
    imu_channels: int = 6
    imu_length: int = 2000
    imu_patch: int = 8
    # Fixed logit scales of the postprocessors (text's is learned, initialised at 1/0.07).
    logit_scales: dict = field(
        default_factory=lambda: {
            Tower.TEXT: 1 / 0.07,
            Tower.AUDIO: 20.0,
            Tower.DEPTH: 5.0,
            Tower.THERMAL: 10.0,
            Tower.IMU: 5.0,
        }
    )

    def tower(self, tower: Tower) -> TransformerCfg:
        return getattr(self, Tower(tower).value)


IMAGEBIND_HUGE = ImageBindCfg(
    name="imagebind_huge",
    vision=TransformerCfg(width=1280, layers=32, heads=16, pre_norm=True),
    text=TransformerCfg(width=1024, layers=24, heads=16, causal=True),
    audio=TransformerCfg(width=768, layers=12, heads=12, add_bias_kv=True),
    depth=TransformerCfg(width=384, layers=12, heads=8, add_bias_kv=True),
    thermal=TransformerCfg(width=768, layers=12, heads=12, add_bias_kv=True),
    imu=TransformerCfg(width=512, layers=6, heads=8, add_bias_kv=True),
)

# Test-only: random weights, real shapes everywhere but the trunk widths and depths.
TINY_TEST = replace(
    IMAGEBIND_HUGE,
    name="tiny_test",
    vision=TransformerCfg(width=32, layers=2, heads=2, pre_norm=True),
    text=TransformerCfg(width=32, layers=2, heads=2, causal=True),
    audio=TransformerCfg(width=32, layers=2, heads=2, add_bias_kv=True),
    depth=TransformerCfg(width=32, layers=2, heads=2, add_bias_kv=True),
    thermal=TransformerCfg(width=32, layers=2, heads=2, add_bias_kv=True),
    imu=TransformerCfg(width=32, layers=2, heads=2, add_bias_kv=True),
)

CONFIGS: dict[str, ImageBindCfg] = {cfg.name: cfg for cfg in (IMAGEBIND_HUGE, TINY_TEST)}


RANDOM_MARK = ":random-"  # model ids of random-weights checkpoints: "tiny_test:random-0"


def architecture_of(model_id: str) -> str:
    """The architecture name in a model id (``"tiny_test:random-0"`` -> ``"tiny_test"``)."""
    return model_id.split(RANDOM_MARK)[0]


def is_random_weights(model_id: str) -> bool:
    """Whether a model id names a random-weights checkpoint (``xsearch random-checkpoint``)."""
    return RANDOM_MARK in model_id


def get_config(name: str) -> ImageBindCfg:
    """The architecture called ``name`` (or named by a model id); ``UsageError`` lists the known ones."""
    try:
        return CONFIGS[architecture_of(name)]
    except KeyError:
        raise UsageError(f"unknown model {name!r} (known: {', '.join(CONFIGS)})", argument="model") from None
