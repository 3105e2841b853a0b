"""The Swin-UNet of ResShift/SinSR (float) and BiMaCoSR (binarized), written from the spec.

The float model is built first; :func:`binarize` then swaps every Conv2d/Linear that
the config does not keep in full precision for a BiMaCoSR binary layer, exactly as
the original's ``replace_conv_and_linear()`` does before loading a checkpoint. Module
names therefore mirror the checkpoint keys.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .binary_layers import BINARY_TYPES, BinaryConv2d, BinaryLinear, init_from_float
from .config import BinaryConfig, UNetConfig
from .norms import GroupNorm32
from .swin import BasicLayer


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding [N, dim]: cos of the frequencies first, then sin."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    """GN-SiLU-conv, scale/shift from the embedding, GN-SiLU-conv, plus a (1x1) skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, use_scale_shift_norm: bool):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """3x3 stride-2 conv (``op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class SwinUNet(nn.Module):
    """``UNetModelSwin`` (float) / ``UNetModelSwinQuant`` (after :func:`binarize`).

    ``forward(x, timesteps, lq)``: x is the (normalised) latent, lq the low-resolution
    condition at the same spatial size (or a different one: pixel-unshuffled by 2 when
    lq is taller, nearest-upsampled x4 otherwise, as in the original).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        emb_dim = cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        heads = cfg.swin_embed_dim // cfg.num_head_channels

        def swin(ch: int, level: int) -> BasicLayer:
            window, shift = cfg.window_at(level)
            return BasicLayer(
                ch, cfg.swin_embed_dim, heads, window, shift, cfg.swin_depth, cfg.mlp_ratio,
                linear=nn.Linear, conv1x1=lambda i, o: nn.Conv2d(i, o, 1),
                construction_size=cfg.image_size // 2**level,
            )

        ch = cfg.channel_mult[0] * mc
        first_in = cfg.in_channels
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(first_in, ch, 3, padding=1))])
        chans = [ch]
        ds = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for nr in range(cfg.num_res_blocks[level]):
                layers: List[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, cfg.use_scale_shift_norm)]
                ch = mult * mc
                if ds in cfg.attention_resolutions and nr == 0:
                    layers.append(swin(ch, level))
                self.input_blocks.append(EmbedSequential(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds //= 2
        last = len(cfg.channel_mult) - 1
        self.middle_block = EmbedSequential(
            ResBlock(ch, emb_dim, ch, cfg.use_scale_shift_norm), swin(ch, last),
            ResBlock(ch, emb_dim, ch, cfg.use_scale_shift_norm),
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks[level] + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, emb_dim, mc * mult, cfg.use_scale_shift_norm)]
                ch = mc * mult
                if ds in cfg.attention_resolutions and i == 0:
                    layers.append(swin(ch, level))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds *= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    @property
    def size_multiple(self) -> int:
        """Latent H and W must be multiples of this."""
        return self.config.size_multiple

    def check_input(self, x: torch.Tensor, lq: Optional[torch.Tensor]) -> None:
        """Raise InputError naming the shape when the model cannot take this input."""
        cfg = self.config
        expected_c = cfg.in_channels - (lq.shape[1] if lq is not None and cfg.cond_lq else 0)
        if x.dim() != 4 or x.shape[1] != expected_c:
            raise InputError(f"UNet input x has shape {tuple(x.shape)}; expected [N, {expected_c}, H, W]")
        m = self.size_multiple
        h, w = x.shape[-2:]
        if h % m or w % m or h == 0 or w == 0:
            raise InputError(
                f"UNet input x has spatial size {h}x{w}; this model needs H and W to be positive multiples of {m}"
            )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, lq: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_input(x, lq)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        if lq is not None and self.config.cond_lq:
            if lq.shape[2:] != x.shape[2:]:
                if lq.shape[2] > x.shape[2]:
                    lq = F.pixel_unshuffle(lq, 2)
                else:
                    lq = F.interpolate(lq, scale_factor=4, mode="nearest")
            x = torch.cat([x, lq], dim=1)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


# --------------------------------------------------------------------------- binarization


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@torch.no_grad()
def binarize(model: SwinUNet, bcfg: BinaryConfig, init: bool = True) -> SwinUNet:
    """Replace Conv2d/Linear layers by BiMaCoSR binary layers, initialised from their float weights
    (``init=False`` skips that, e.g. for structure-only models on the meta device)."""
    targets: List[Tuple[str, nn.Module]] = [
        (n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)
    ]
    for name, m in targets:
        is_conv = isinstance(m, nn.Conv2d)
        if bcfg.keeps_full_precision(name, sum(p.numel() for p in m.parameters()), is_conv):
            continue
        if is_conv:
            layer: nn.Module = BinaryConv2d(
                m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                rank=bcfg.conv_rank, use_smb=bcfg.conv_smb, use_lrmb=bcfg.conv_lrmb,
            )
        else:
            layer = BinaryLinear(
                m.in_features, m.out_features, rank=bcfg.linear_rank, use_smb=bcfg.linear_smb, use_lrmb=bcfg.linear_lrmb
            )
        if init:
            init_from_float(layer, m.weight, m.bias)
        _set_submodule(model, name, layer)
    return model


def build_unet(cfg: UNetConfig, init: bool = True) -> SwinUNet:
    """The float model, binarized when the config says so (weights: torch's default init)."""
    model = SwinUNet(cfg)
    if cfg.binary is not None:
        binarize(model, cfg.binary, init=init)
    return model


def iter_binary_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, layer) of every binary layer, in execution order of the UNet."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BINARY_TYPES)]
