"""Normalisation layers shared by the UNet and its Swin blocks."""

from __future__ import annotations

import torch
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back (the UNet's ``normalization()``; eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)
