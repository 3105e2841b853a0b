"""The Swin ``BasicLayer`` of the ResShift/SinSR UNet, with the original's attention-mask behaviour.

Quirk reproduced on purpose (spec section d, g.1): the stored ``attn_mask`` buffer is
never read. The original recomputes the mask at every forward with code that
indexes the wrong axes; its effective value is: in a shifted block, windows in the
LAST row of windows get -100 between tokens on different sides of the within-window
column ``w - shift``; every other window gets 0. :func:`effective_attention_mask`
builds exactly that.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .norms import GroupNorm32

LayerFactory = Callable[..., nn.Module]


def relative_position_index(window: int) -> torch.Tensor:
    """Standard Swin index [w^2, w^2] into the (2w-1)^2 bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def effective_attention_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """The mask the original actually adds, [nW, w^2, w^2], for a run-time feature size."""
    n_rows, n_cols = height // window, width // window
    mask = torch.zeros(n_rows * n_cols, window * window, window * window)
    if shift == 0:
        return mask
    col = torch.arange(window * window) % window
    right = col >= window - shift
    last_row = torch.where(right[:, None] != right[None, :], -100.0, 0.0)
    mask[(n_rows - 1) * n_cols :] = last_row
    return mask


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with the relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, linear: LayerFactory):
        super().__init__()
        self.dim, self.window, self.num_heads = dim, window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = linear(dim, dim * 3)
        self.proj = linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        b_, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b_, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(n, n, h).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:  # an unshifted block's mask is all zero: adding it changes nothing
            n_windows = mask.shape[0]
            attn = attn.view(b_ // n_windows, n_windows, h, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, h, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


class Mlp(nn.Module):
    """fc1 (1x1 conv) -> exact GELU -> fc2 (1x1 conv), on NCHW."""

    def __init__(self, dim: int, hidden: int, conv1x1: LayerFactory):
        super().__init__()
        self.fc1 = conv1x1(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = conv1x1(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """[N, H, W, C] -> [N * nW, w*w, C], windows ordered (n, window row, window column)."""
    n, h, wd, c = x.shape
    x = x.view(n, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(windows: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> [N, H, W, C]."""
    c = windows.shape[-1]
    x = windows.view(-1, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


class SwinBlock(nn.Module):
    """One Swin transformer block on NCHW features (GroupNorm32 norms, conv MLP)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        linear: LayerFactory,
        conv1x1: LayerFactory,
        construction_size: int = 0,
    ):
        super().__init__()
        self.window, self.shift = window, shift
        self.construction_size = construction_size  # the feature size the original built attn_mask for
        self.norm1 = GroupNorm32(32, dim)
        self.attn = WindowAttention(dim, window, num_heads, linear)
        self.norm2 = GroupNorm32(32, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), conv1x1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, wd = x.shape
        w, s = self.window, self.shift
        if h % w or wd % w:
            raise ValueError(f"Swin window {w} does not divide the feature size {h}x{wd}")
        t = self.norm1(x).permute(0, 2, 3, 1)
        if s:
            t = torch.roll(t, shifts=(-s, -s), dims=(1, 2))
        mask = effective_attention_mask(h, wd, w, s).to(x.device, x.dtype) if s else None
        t = window_reverse(self.attn(window_partition(t, w), mask), w, h, wd)
        if s:
            t = torch.roll(t, shifts=(s, s), dims=(1, 2))
        x = x + t.permute(0, 3, 1, 2)
        return x + self.mlp(self.norm2(x))


class PatchProj(nn.Module):
    """Holds the 1x1 ``proj`` of patch_embed / patch_unembed (patch size 1, no norm)."""

    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class BasicLayer(nn.Module):
    """embed (1x1 C -> E) -> Swin blocks -> unembed (1x1 E -> C); no residual around it."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        num_heads: int,
        window: int,
        shift: int,
        depth: int,
        mlp_ratio: float,
        linear: LayerFactory,
        conv1x1: LayerFactory,
        construction_size: int = 0,
    ):
        super().__init__()
        self.patch_embed = PatchProj(conv1x1(in_chans, embed_dim))
        self.blocks = nn.ModuleList(
            SwinBlock(
                embed_dim, num_heads, window, 0 if i % 2 == 0 else shift, mlp_ratio, linear, conv1x1, construction_size
            )
            for i in range(depth)
        )
        self.patch_unembed = PatchProj(conv1x1(embed_dim, in_chans))

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed(x)
