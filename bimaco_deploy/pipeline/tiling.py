"""Tiled super-resolution of large LR images (the original sampler's "chop", spec section a).

An image whose height or width exceeds ``tile`` is cut into tiles of at most
``tile`` x ``tile`` LR pixels, starting at :func:`tile_starts` per axis, visited row-major.
Each tile runs the whole one-step pipeline on its own (own padding, own noise); the
[-1, 1] SR tiles are summed on an ``sf``-times canvas and divided by a per-pixel count
(plain averaging of overlaps, no feathering), then mapped to [0, 1].

Tile sizes: the original accepts only 256 (stride 224) and 512 (stride 448). Here any
``tile >= 1`` with ``1 <= stride <= tile`` is allowed, because the maths does not depend on
the values and small tiles are what make tiling testable (and usable on small devices);
:data:`PUBLISHED_TILINGS` lists the original's pairs and :func:`default_stride` gives the
original's stride for them (tile - tile/8 otherwise).

Noise: the original seeds the global RNG once and draws fresh noise per tile, which is not
reproducible outside its process. Here tile ``i`` of an image draws from
:func:`tile_generator` (seed, i): results are reproducible for a seed and do not depend on
the order in which images are processed.

Batches: the tiles of an image share one size, so ``vq_batch`` of them go through the
autoencoder together (the UNet still runs tile by tile: a TensorRT engine's profile is
usually built for batch 1). On a GPU the default batch is what fits a quarter of the free
memory (:func:`autoencoder_tile_bytes`); on a CPU it is 1: the convolutions already use every
core for one tile, so a batch would only multiply the memory (a 256 px tile of the published
model: the torch float32 encoder peaks at 3.5 GB, the decoder at 6.6 GB, measured on Zen 5). Memory is bounded by one batch
of tiles, whatever the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .onestep import OneStepSR

#: (tile, stride) pairs the original sampler accepts.
PUBLISHED_TILINGS = ((256, 224), (512, 448))


def default_stride(tile: int) -> int:
    """The original's stride for its two tile sizes; tile - tile // 8 in general (same rule)."""
    return dict(PUBLISHED_TILINGS).get(tile, tile - tile // 8)


def _check(tile: int, stride: int) -> None:
    if not isinstance(tile, int) or not isinstance(stride, int) or tile < 1 or not 1 <= stride <= tile:
        raise InputError(f"invalid tiling: tile {tile!r}, stride {stride!r}; need tile >= 1 and 1 <= stride <= tile")


def tile_starts(length: int, tile: int, stride: int) -> List[int]:
    """Tile start offsets along one axis of ``length`` LR pixels.

    [0] when length <= tile; else range(0, length, stride) with every start s where
    s + tile > length replaced by length - tile, duplicates dropped, order kept.
    """
    _check(tile, stride)
    if length <= tile:
        return [0]
    starts: List[int] = []
    for s in range(0, length, stride):
        s = min(s, length - tile)
        if s not in starts:
            starts.append(s)
    return starts


@dataclass(frozen=True)
class Tile:
    """One LR tile: rows [top, top+height), columns [left, left+width); ``index`` is row-major."""

    index: int
    top: int
    left: int
    height: int
    width: int


def plan_tiles(height: int, width: int, tile: int = 256, stride: Optional[int] = None) -> List[Tile]:
    """Tiles of an H x W LR image, row-major (height starts outer, width starts inner).

    A single tile covering the whole image when neither side exceeds ``tile``.
    """
    stride = default_stride(tile) if stride is None else stride
    _check(tile, stride)
    out: List[Tile] = []
    for top in tile_starts(height, tile, stride):
        for left in tile_starts(width, tile, stride):
            out.append(Tile(len(out), top, left, min(tile, height - top), min(tile, width - left)))
    return out


def tile_generator(seed: int, index: int, device: Optional[torch.device] = None) -> torch.Generator:
    """A torch generator for tile ``index`` of an image processed with ``seed``.

    (seed, index) is mixed through numpy's SeedSequence so neighbouring seeds and
    indices give unrelated streams.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def iter_tiles(lr01: Tensor, tiles: List[Tile]) -> Iterator[Tuple[Tile, Tensor]]:
    """(tile, LR crop) pairs."""
    for t in tiles:
        yield t, lr01[:, :, t.top : t.top + t.height, t.left : t.left + t.width]


def autoencoder_tile_bytes(pipeline: OneStepSR, height: int, width: int) -> int:
    """An estimate of the autoencoder's peak activation memory for one LR tile of ``height`` x ``width``:
    about twelve full-resolution tensors of the first level's width (image = sf x the padded tile):
    6.4 GB for a 256 px tile of the published model in float32, where the decoder measured 6.6 GB."""
    pad = pipeline.pad_multiple
    h, w = -(-height // pad) * pad * pipeline.sf, -(-width // pad) * pad * pipeline.sf
    cfg = pipeline.config.autoencoder
    ch = cfg.ch * cfg.ch_mult[0] if cfg is not None else 128
    elem = 2 if pipeline.vq_precision in ("fp16", "bf16") else 4
    return 12 * h * w * ch * elem


def default_vq_batch(pipeline: OneStepSR, height: int, width: int) -> int:
    """Tiles per autoencoder batch: 1 on a CPU; on a GPU what fits a quarter of the free memory."""
    if pipeline.device.type != "cuda":
        return 1
    free, _total = torch.cuda.mem_get_info(pipeline.device)
    return max(1, int(free // 4 // max(1, autoencoder_tile_bytes(pipeline, height, width))))


class TileCanvas:
    """The blending half of tiling: add each tile's [-1, 1] SR in tile order, then :meth:`result`.

    Overlaps are plain averages (sum / count), as in the original. Tiles must be added in
    index order: float sums of overlapping pixels depend on the order of the additions.
    Used by :func:`super_resolve` and by the Triton tiler (:mod:`bimaco_deploy.serving`),
    which gets each tile's SR from a server instead of a local pipeline.
    """

    def __init__(self, batch: int, height: int, width: int, sf: int, device: Optional[torch.device] = None):
        self.sf = sf
        self.canvas = torch.zeros((batch, 3, height * sf, width * sf), dtype=torch.float32, device=device)
        self.count = torch.zeros_like(self.canvas)
        self._next = 0

    def add(self, t: Tile, sr_signed: Tensor) -> None:
        """Add tile ``t``'s SR in [-1, 1], [N, 3, sf*t.height, sf*t.width]."""
        if t.index != self._next:
            raise InputError(f"tile {t.index} added out of order (expected tile {self._next})")
        sf = self.sf
        rows = slice(t.top * sf, (t.top + t.height) * sf)
        cols = slice(t.left * sf, (t.left + t.width) * sf)
        self.canvas[:, :, rows, cols] += sr_signed
        self.count[:, :, rows, cols] += 1
        self._next += 1

    def result(self) -> Tensor:
        """The blended SR in [0, 1]."""
        # every pixel is covered: the last start of each axis is length - tile
        return self.canvas.div(self.count) * 0.5 + 0.5


@torch.no_grad()
def super_resolve(
    pipeline: OneStepSR,
    lr01: Tensor,
    *,
    seed: int = 0,
    tile: int = 256,
    stride: Optional[int] = None,
    vq_batch: Optional[int] = None,
    on_tile: Optional[Callable[[int, int], None]] = None,
) -> Tensor:
    """SR of an LR image [N, 3, H, W] in [0, 1] -> [N, 3, sf*H, sf*W] in [0, 1], tiling when needed.

    Without tiling (H, W <= tile) this is ``pipeline(lr01, generator=tile_generator(seed, 0))``.
    ``vq_batch``: tiles per autoencoder call (default :func:`default_vq_batch`); 1 reproduces
    tile-by-tile runs exactly, larger batches within float rounding. ``on_tile(done, total)``
    is called after each tile (progress of one large image).
    """
    if lr01.dim() != 4 or lr01.shape[1] != 3:
        raise InputError(f"expected an LR image tensor [N, 3, H, W], got shape {tuple(lr01.shape)}")
    if vq_batch is not None and vq_batch < 1:
        raise InputError(f"vq_batch must be at least 1, got {vq_batch}")
    n, _, h, w = lr01.shape
    tiles = plan_tiles(h, w, tile, stride)
    if len(tiles) == 1:
        out = pipeline(lr01, generator=tile_generator(seed, 0))
        if on_tile is not None:
            on_tile(1, 1)
        return out
    batch = vq_batch or default_vq_batch(pipeline, tiles[0].height, tiles[0].width)
    canvas = TileCanvas(n, h, w, pipeline.sf, device=pipeline.device)
    for start in range(0, len(tiles), batch):
        group = tiles[start : start + batch]
        crops = torch.cat([crop for _, crop in iter_tiles(lr01, group)], dim=0)  # every tile has one size
        for t, sr in zip(group, _tiles_signed(pipeline, crops, group, n, seed)):
            canvas.add(t, sr)
            if on_tile is not None:
                on_tile(t.index + 1, len(tiles))
    return canvas.result()


def _tiles_signed(pipeline: OneStepSR, crops: Tensor, group: List[Tile], n: int, seed: int) -> List[Tensor]:
    """:meth:`OneStepSR.sample_signed` of each tile of ``group`` (crops stacked tile-major, n images
    each), the autoencoder run once for the whole group, the UNet tile by tile with each tile's noise."""
    h, w = crops.shape[-2:]
    y0 = pipeline.prepare(crops)
    z = pipeline.encode(pipeline.upsample(y0))
    outs = []
    for i, t in enumerate(group):
        part = slice(i * n, (i + 1) * n)
        noise = pipeline.make_noise(z[part], tile_generator(seed, t.index))
        x_in = pipeline.scale_input(pipeline.prior(z[part], noise))
        out = pipeline.unet(x_in, pipeline.timesteps(n), y0[part])
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(x_in.shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InputError(f"the UNet returned {got}; expected a tensor of shape {tuple(x_in.shape)}")
        outs.append(out.to(device=pipeline.device, dtype=torch.float32))
    decoded = pipeline.decode(torch.cat(outs, dim=0))[:, :, : h * pipeline.sf, : w * pipeline.sf].clamp(-1.0, 1.0)
    return [decoded[i * n : (i + 1) * n] for i in range(len(group))]
