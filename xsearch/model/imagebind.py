"""ImageBind: six towers, one embedding space.

``ImageBind`` only assembles towers; the ``_build_*`` functions below build each part from the config.
The four ``ModuleDict``s (``modality_preprocessors``, ``modality_trunks``, ``modality_heads``,
``modality_postprocessors``) and everything under them carry the official checkpoint's names.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from xsearch.modalities import Tower
from xsearch.model.config import ImageBindCfg, get_config
from xsearch.model.towers import (
    ImuTokenizer,
    PatchEmbed,
    PatchTokenizer,
    RepeatFrames,
    TextHead,
    TextTokenizer,
    cls_head,
    postprocessor,
)
from xsearch.model.transformer import Transformer


def _build_preprocessor(cfg: ImageBindCfg, tower: Tower) -> nn.Module:
    width = cfg.tower(tower).width
    if tower is Tower.VISION:
        t, p, _ = cfg.vision_patch
        proj = nn.Sequential(
            RepeatFrames(cfg.video_frames),
            nn.Conv3d(3, width, kernel_size=cfg.vision_patch, stride=cfg.vision_patch, bias=False),
        )
        patches = (cfg.video_frames // t) * (cfg.image_size // p) ** 2
        return PatchTokenizer("rgbt_stem", PatchEmbed(proj), patches, width)
    if tower is Tower.TEXT:
        return TextTokenizer(cfg.vocab_size, cfg.context_length, width)
    if tower is Tower.AUDIO:
        k, s = cfg.audio_patch, cfg.audio_stride
        proj = nn.Conv2d(1, width, kernel_size=k, stride=s, bias=False)
        patches = ((cfg.audio_mel_bins - k) // s + 1) * ((cfg.audio_target_len - k) // s + 1)
        return PatchTokenizer("rgbt_stem", PatchEmbed(proj, nn.LayerNorm(width)), patches, width)
    if tower in (Tower.DEPTH, Tower.THERMAL):
        k = cfg.depth_patch if tower is Tower.DEPTH else cfg.thermal_patch
        proj = nn.Conv2d(1, width, kernel_size=k, stride=k, bias=False)
        stem_name = "depth_stem" if tower is Tower.DEPTH else "rgbt_stem"
        return PatchTokenizer(stem_name, PatchEmbed(proj, nn.LayerNorm(width)), (cfg.image_size // k) ** 2, width)
    if tower is Tower.IMU:
        return ImuTokenizer(cfg.imu_channels, cfg.imu_length, cfg.imu_patch, width)
    raise ValueError(f"unknown tower {tower!r}")


def _build_head(cfg: ImageBindCfg, tower: Tower) -> nn.Module:
    width = cfg.tower(tower).width
    if tower is Tower.TEXT:
        return TextHead(width, cfg.embed_dim)
    return cls_head(width, cfg.embed_dim, imu=tower is Tower.IMU)


def _build_postprocessor(cfg: ImageBindCfg, tower: Tower) -> nn.Module:
    return postprocessor(cfg.logit_scales.get(tower), learnable=tower is Tower.TEXT)


class ImageBind(nn.Module):
    """The six ImageBind encoders.

    ``embed(tower, x)`` returns the tower's output exactly as the reference does (unit vector times the
    tower's logit scale); inputs with a leading clips axis (``[B, S, ...]`` audio and video) are embedded
    per clip and averaged. Use :class:`xsearch.encoder.Encoder` for normalised retrieval embeddings.
    """

    def __init__(self, cfg: ImageBindCfg, towers: Iterable[Tower] | None = None):
        super().__init__()
        self.cfg = cfg
        # What the embeddings are called in a database: the architecture, or "<arch>:random-<seed>" for
        # random weights (set by the checkpoint loader), so that spaces that differ are never mixed.
        self.model_id = cfg.name
        self.modality_preprocessors = nn.ModuleDict()
        self.modality_trunks = nn.ModuleDict()
        self.modality_heads = nn.ModuleDict()
        self.modality_postprocessors = nn.ModuleDict()
        self.add_towers(list(Tower) if towers is None else towers)

    @property
    def towers(self) -> list[Tower]:
        """The towers this instance holds (a job may build only the ones it needs)."""
        return [Tower(key) for key in self.modality_trunks]

    def add_towers(self, towers: Iterable[Tower]) -> None:
        """Build the missing ``towers`` (random weights; the checkpoint loader fills them)."""
        for tower in map(Tower, towers):
            if tower.value in self.modality_trunks:
                continue
            self.modality_preprocessors[tower.value] = _build_preprocessor(self.cfg, tower)
            self.modality_trunks[tower.value] = Transformer(self.cfg.tower(tower))
            self.modality_heads[tower.value] = _build_head(self.cfg, tower)
            self.modality_postprocessors[tower.value] = _build_postprocessor(self.cfg, tower)

    def embed(self, tower: Tower | str, x: torch.Tensor) -> torch.Tensor:
        tower = Tower(tower)
        clips = None
        if x.ndim > tower.spec.batch_ndim:
            # [B, S, ...]: S clips per item (video clips x crops, audio clips), averaged after embedding.
            clips = x.shape[1]
            x = x.flatten(0, 1)
        key = tower.value
        tokens = self.modality_preprocessors[key](x)
        tokens = self.modality_trunks[key](tokens)
        head = self.modality_heads[key]
        pooled = head(tokens, x) if tower is Tower.TEXT else head(tokens)
        out = self.modality_postprocessors[key](pooled)
        if clips is not None:
            out = out.unflatten(0, (-1, clips)).mean(dim=1)
        return out

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Embed a dict of tower -> input, like the reference model's ``forward``."""
        return {key: self.embed(key, value) for key, value in inputs.items()}


def create_model(
    name: str | ImageBindCfg = "imagebind_huge",
    *,
    device: str | torch.device = "cpu",
    towers: Iterable[Tower] | None = None,
) -> ImageBind:
    """Build ImageBind with random weights (load a checkpoint with :func:`xsearch.model.load_pretrained`).

    Example
    -------
    >>> from xsearch.model import create_model
    >>> model = create_model("tiny_test")  # test-only size
    """
    cfg = get_config(name) if isinstance(name, str) else name
    with torch.device(device):
        model = ImageBind(cfg, towers)
    return model.eval()
