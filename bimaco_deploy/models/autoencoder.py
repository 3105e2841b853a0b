"""The VQ-f4 autoencoder of the one-step SR pipeline (latent-diffusion ``VQModelTorch``).

Written from the spec (``spec/bimacosr.md`` section e), not copied. Module and
parameter names mirror the checkpoint keys (``encoder.down.0.block.0.norm1.weight``,
``decoder.up.1.upsample.conv.bias``, ``quantize.embedding.weight`` ...), so a released
``autoencoder_vq_f4.pth`` or the fixture ``vqgan.pth`` loads with strict key matching.

Inference path of the sampler: ``encode`` does NOT quantize; ``decode`` quantizes first
(nearest codebook vector per latent pixel), then ``post_quant_conv`` and the decoder.
Everything is full precision; the sampler runs this model in float16 when the config
says ``use_fp16: true`` (see :class:`~bimaco_deploy.pipeline.onestep.OneStepSR`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .checkpoint import check_checkpoint_file, load_state_dict_strict, read_state_dict
from .config import VQConfig, load_vq_config

PathLike = Union[str, Path]

__all__ = [
    "ATTN_SCORE_BYTES",
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "Upsample",
    "VQModel",
    "VectorQuantizer",
    "attention_chunk_rows",
    "build_autoencoder",
    "load_autoencoder",
]


def _normalize(channels: int) -> nn.GroupNorm:
    # GroupNorm(32) with the latent-diffusion eps; no float32 upcast, so it runs in float16 too
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: Tensor) -> Tensor:
    # written as x * sigmoid(x) rather than F.silu: same expression as the original, so
    # float16 rounding follows the same two steps
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, plus a (1x1 when widths differ) shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))  # dropout is 0 / eval: nothing to apply
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


#: Bytes of attention scores held at once. The mid-block attention runs over every latent
#: position: one [HW x HW] matrix is 17 GB for a 256x256 latent (a 256 px LR tile), so the
#: queries are processed in row chunks whose scores fit this budget. The size is a speed
#: trade-off too (2 Zen 5 cores, float32): 64 channels x 65,536 positions took 0.68 s per
#: 4,096 query rows with 64-row chunks (16 MiB), 0.96 s with 256 rows and 1.34 s with 16;
#: 512 channels x 4,096 positions 182 ms with 16 MiB, 188 ms with 4 MiB, 218 ms with 32 MiB.
ATTN_SCORE_BYTES = 16 << 20


def attention_chunk_rows(positions: int, element_size: int, budget: int = ATTN_SCORE_BYTES) -> int:
    """Query rows per chunk so that one chunk's [rows x positions] scores fit ``budget`` bytes."""
    return max(1, min(positions, budget // max(1, positions * element_size)))


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual connection.

    Exact softmax per query row, computed in query chunks (:func:`attention_chunk_rows`):
    each row sees every key as in the original, so results agree with the unchunked
    formula to float rounding, but at most ``score_bytes`` of scores exist at a time.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.score_bytes = ATTN_SCORE_BYTES

    def forward(self, x: Tensor) -> Tensor:
        hn = self.norm(x)
        q, k, v = self.q(hn), self.k(hn), self.v(hn)
        b, c, h, w = q.shape
        n = h * w
        # same bmm/scale/softmax sequence as the original, per chunk of query rows
        q = q.reshape(b, c, n).permute(0, 2, 1)  # [b, hw(query), c]
        k = k.reshape(b, c, n)  # [b, c, hw(key)]
        v = v.reshape(b, c, n)
        scale = int(c) ** (-0.5)
        rows = attention_chunk_rows(n, q.element_size(), self.score_bytes)
        out = torch.empty((b, c, n), dtype=v.dtype, device=v.device)
        for start in range(0, n, rows):
            weights = torch.bmm(q[:, start : start + rows], k) * scale  # [b, rows, hw(key)]
            weights = F.softmax(weights, dim=2)
            out[:, :, start : start + rows] = torch.bmm(v, weights.permute(0, 2, 1))
        return x + self.proj_out(out.reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero-pad right and bottom by one pixel, then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (AttnBlocks, usually empty) and
    an optional ``downsample`` / ``upsample``; attribute names are the checkpoint's."""

    def __init__(self, blocks: Sequence[ResnetBlock], attns: Sequence[AttnBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        return x


class Encoder(nn.Module):
    """conv_in, levels of ResnetBlocks with Downsample between them, mid block, norm/swish/conv_out."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        res = cfg.resolution
        in_mult = (1,) + tuple(mult)
        self.down = nn.ModuleList()
        block_in = ch
        for level, m in enumerate(mult):
            block_in = ch * in_mult[level]
            block_out = ch * m
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            lvl = _Level(blocks, attns)
            if level != len(mult) - 1:
                lvl.downsample = Downsample(block_in)
                res //= 2
            self.down.append(lvl)
        self.mid = _Mid(block_in)
        self.norm_out = _normalize(block_in)
        out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, out, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level, lvl in enumerate(self.down):
            h = lvl.run_blocks(h)
            if level != len(self.down) - 1:
                h = lvl.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in, mid block, levels (deepest first) of ResnetBlocks with Upsample, norm/swish/conv_out.

    ``up`` is indexed by level, not by execution order: ``up[-1]`` runs first.
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        n = len(mult)
        block_in = ch * mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in)
        levels = [None] * n
        for level in reversed(range(n)):
            block_out = ch * mult[level]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            lvl = _Level(blocks, attns)
            if level != 0:
                lvl.upsample = Upsample(block_in)
                res *= 2
            levels[level] = lvl
        self.up = nn.ModuleList(levels)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.up))):
            h = self.up[level].run_blocks(h)
            if level != 0:
                h = self.up[level].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantizer (legacy ``VectorQuantizer2`` maths, no index remap)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: Tensor) -> Tuple[Tensor, Tensor]:
        """z [N, D, H, W] -> (z_q [N, D, H, W], indices int64 [N, H, W])."""
        n, d, h, w = z.shape
        if d != self.embed_dim:
            raise ValueError(f"quantizer expects {self.embed_dim} latent channels, got shape {tuple(z.shape)}")
        zl = z.permute(0, 2, 3, 1).contiguous()  # channels-last, as the original flattens
        flat = zl.view(-1, d)
        e = self.embedding.weight
        # |z|^2 + |e|^2 - 2 z.e, evaluated in that order; argmin takes the first index on ties
        dist = (
            torch.sum(flat**2, dim=1, keepdim=True)
            + torch.sum(e**2, dim=1)
            - 2 * torch.einsum("bd,dn->bn", flat, e.t())
        )
        idx = torch.argmin(dist, dim=1)
        zq = self.embedding(idx).view(zl.shape)
        # straight-through form z + (e - z): can differ from e by one rounding, as in the original
        zq = zl + (zq - zl)
        return zq.permute(0, 3, 1, 2).contiguous(), idx.view(n, h, w)


class VQModel(nn.Module):
    """The VQ-f4 autoencoder: ``encode`` (continuous latent), ``quantize``, ``decode`` (quantizes first)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype (float16 after ``.half()``); inputs must be cast to it."""
        return self.quant_conv.weight.dtype

    @property
    def downscale(self) -> int:
        """Spatial factor between image and latent (4 for VQ-f4)."""
        return self.config.downscale

    def encode(self, x: Tensor) -> Tensor:
        """Image [N, 3, H, W] (H, W multiples of ``downscale``) -> pre-quantization latent."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z: Tensor, force_not_quantize: bool = False) -> Tensor:
        """Latent -> image; quantizes to the codebook first unless ``force_not_quantize``."""
        if not force_not_quantize:
            z, _ = self.quantize(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def _check_config(cfg: VQConfig, source: str) -> None:
    problems = []
    if cfg.ch % 32 or any((cfg.ch * m) % 32 for m in cfg.ch_mult):
        problems.append(f"every width ch*ch_mult must be a multiple of 32 (GroupNorm32), got ch {cfg.ch}, ch_mult {list(cfg.ch_mult)}")
    if cfg.double_z:
        problems.append("double_z: true is not supported (the VQ model uses a single latent)")
    if cfg.z_channels != cfg.embed_dim:
        # the original would build it, but quant_conv then changes the width and the
        # decoder's conv_in (z_channels wide) would not accept the quantized latent
        problems.append(f"z_channels ({cfg.z_channels}) must equal embed_dim ({cfg.embed_dim})")
    if cfg.num_res_blocks < 1 or not cfg.ch_mult or cfg.n_embed < 1:
        problems.append("num_res_blocks, ch_mult and n_embed must be non-empty / positive")
    if problems:
        raise ConfigError(f"{source}: autoencoder config not supported: " + "; ".join(problems))


def build_autoencoder(cfg: VQConfig, *, seed: Optional[int] = None) -> VQModel:
    """A VQ model with default (PyTorch) initialisation, seeded (``seed`` None means 0) so that
    two builds with the same seed are identical. Float32, eval mode. The global RNG is untouched."""
    _check_config(cfg, "autoencoder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        model = VQModel(cfg)
    return model.eval()


def load_autoencoder(
    config_path: Union[PathLike, VQConfig], ckpt_path: Optional[PathLike] = None, *, seed: Optional[int] = None
) -> VQModel:
    """Build the VQ model from a config and load its weights.

    ``config_path``: a full BiMaCoSR config, a file with only the ``autoencoder`` section
    (like the fixture's ``vqgan.yaml``), a built-in config name, or a :class:`VQConfig`.
    ``ckpt_path``: ``torch.load(weights_only=True)`` state dict, raw or under
    ``'state_dict'``, with or without a ``module.`` prefix; loaded strictly (missing,
    unexpected or mis-shaped keys, corrupt files and non-tensor pickles raise
    :class:`~bimaco_deploy.errors.CheckpointError`). ``None``: seeded
    random weights (see :func:`build_autoencoder`). Returns float32, eval mode; the
    pipeline casts it to float16 when the config asks for it.
    """
    cfg = config_path if isinstance(config_path, VQConfig) else load_vq_config(config_path)
    source = "autoencoder" if isinstance(config_path, VQConfig) else str(config_path)
    _check_config(cfg, source)
    if ckpt_path is not None:
        check_checkpoint_file(ckpt_path)  # a bad file is named before the model is built
    model = build_autoencoder(cfg, seed=seed)
    if ckpt_path is not None:
        load_state_dict_strict(model, read_state_dict(ckpt_path), source=ckpt_path, what="autoencoder")
    model.eval().requires_grad_(False)
    return model
