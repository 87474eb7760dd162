"""What every modality's ``prepare`` returns: model input plus what a results page shows about the file."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Preprocessed:
    """Model input for one file plus its ``items`` metadata (width, height, duration, sample_rate, thumbnail)."""

    tensor: torch.Tensor
    metadata: dict = field(default_factory=dict)
