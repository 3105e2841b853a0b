"""Tiled super-resolution: the original's start rule, coverage, plain averaging, reproducible noise."""

from __future__ import annotations

import pytest
import torch

from bimaco_deploy.errors import InputError
from bimaco_deploy.models.autoencoder import build_autoencoder
from bimaco_deploy.models.config import load_config
from bimaco_deploy.pipeline.onestep import OneStepSR
from bimaco_deploy.pipeline.tiling import default_stride, plan_tiles, super_resolve, tile_generator, tile_starts


def identity_unet(x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """A stand-in denoiser (pred_x0 = its input): tiling does not depend on what the UNet computes."""
    return x.clone()


@pytest.fixture(scope="module")
def pipe() -> OneStepSR:
    # tiny VQ with seeded random weights in float32 (float16 convs are very slow on CPU);
    # pad to 32 (the tiny UNet's own constraint) to keep every tile small
    cfg = load_config("bimacosr-tiny")
    return OneStepSR(identity_unet, build_autoencoder(cfg.autoencoder, seed=2), cfg, vq_dtype=torch.float32, pad_multiple=32)


@pytest.mark.parametrize(
    "length, expected",
    [
        (1, [0]),
        (256, [0]),
        (257, [0, 1]),
        (300, [0, 44]),
        (480, [0, 224]),
        (481, [0, 224, 225]),
        (700, [0, 224, 444]),
    ],
)
def test_starts_follow_the_original_rule_for_256_224(length, expected):
    assert tile_starts(length, 256, 224) == expected


def test_starts_for_512_448_and_default_strides():
    assert tile_starts(1000, 512, 448) == [0, 448, 488]
    assert tile_starts(512, 512, 448) == [0]
    assert default_stride(256) == 224 and default_stride(512) == 448 and default_stride(64) == 56


@pytest.mark.parametrize("h, w", [(256, 256), (257, 300), (700, 481), (100, 1000)])
def test_tiles_are_row_major_and_cover_every_pixel_once_or_more(h, w):
    tiles = plan_tiles(h, w)
    cover = torch.zeros(h, w, dtype=torch.int32)
    for i, t in enumerate(tiles):
        assert t.index == i and t.height <= 256 and t.width <= 256
        assert t.top + t.height <= h and t.left + t.width <= w
        cover[t.top : t.top + t.height, t.left : t.left + t.width] += 1
    assert int(cover.min()) >= 1
    order = [(t.top, t.left) for t in tiles]
    assert order == sorted(order)  # height outer, width inner


@pytest.mark.parametrize("tile, stride", [(0, 0), (64, 0), (64, 65), (-1, 1)])
def test_invalid_tiling_is_an_input_error(tile, stride):
    with pytest.raises(InputError, match="tiling"):
        plan_tiles(100, 100, tile, stride)


def test_tile_generators_are_reproducible_and_distinct():
    draw = lambda g: torch.randn(4, generator=g)  # noqa: E731
    assert torch.equal(draw(tile_generator(3, 1)), draw(tile_generator(3, 1)))
    assert not torch.equal(draw(tile_generator(3, 1)), draw(tile_generator(3, 2)))
    assert not torch.equal(draw(tile_generator(3, 1)), draw(tile_generator(4, 1)))


@pytest.fixture(scope="module")
def two_tiles(pipe):
    """Tile 32, stride 24 on a 32 x 56 image: width starts [0, 24] -> two tiles overlapping in
    LR columns 24..31 (SR columns 96..127)."""
    lr = torch.rand(1, 3, 32, 56, generator=torch.Generator().manual_seed(0))
    return lr, super_resolve(pipe, lr, seed=11, tile=32, stride=24)


def test_overlaps_are_plain_averages_of_independent_tiles(pipe, two_tiles):
    """Each tile computed on its own, with its own noise stream, averaged in [-1, 1], then mapped to [0, 1]."""
    lr, out = two_tiles
    assert out.shape == (1, 3, 128, 224)
    left = pipe.sample_signed(lr[:, :, :, 0:32], generator=tile_generator(11, 0))
    right = pipe.sample_signed(lr[:, :, :, 24:56], generator=tile_generator(11, 1))
    assert not torch.equal(left[..., 96:], right[..., :32])  # the overlap really mixes two results
    expected = torch.cat([left[..., :96], (left[..., 96:] + right[..., :32]) / 2, right[..., 32:]], dim=-1)
    assert torch.equal(out, expected * 0.5 + 0.5)


def test_another_seed_gives_other_noise(pipe, two_tiles):
    lr, out = two_tiles
    assert not torch.equal(out, super_resolve(pipe, lr, seed=12, tile=32, stride=24))


def test_an_image_within_one_tile_is_not_tiled(pipe):
    lr = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(1))
    out = super_resolve(pipe, lr, seed=5, tile=32, stride=24)
    assert torch.equal(out, pipe(lr, generator=tile_generator(5, 0)))  # also: same seed, same result


@pytest.mark.parametrize("h, w", [(20, 30), (1, 5), (1, 1)])
def test_images_smaller_than_the_padding_super_resolve_to_sf_times_their_size(pipe, h, w):
    lr = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    out = super_resolve(pipe, lr, seed=0)
    assert out.shape == (1, 3, 4 * h, 4 * w)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_tile_canvas_refuses_tiles_out_of_order():
    # overlapping pixels are float sums: a different order of additions gives other bits
    from bimaco_deploy.pipeline.tiling import TileCanvas

    tiles = plan_tiles(40, 40, 32, 24)
    canvas = TileCanvas(1, 40, 40, 4)
    canvas.add(tiles[0], torch.zeros(1, 3, 4 * tiles[0].height, 4 * tiles[0].width))
    with pytest.raises(InputError, match="out of order"):
        canvas.add(tiles[2], torch.zeros(1, 3, 4 * tiles[2].height, 4 * tiles[2].width))


def test_tiles_in_autoencoder_batches_reproduce_tile_by_tile_runs(pipe):
    lr = torch.rand(1, 3, 40, 72, generator=torch.Generator().manual_seed(5))
    seen = []
    one = super_resolve(pipe, lr, seed=4, tile=32, stride=24, vq_batch=1, on_tile=lambda d, n: seen.append((d, n)))
    three = super_resolve(pipe, lr, seed=4, tile=32, stride=24, vq_batch=3)
    torch.testing.assert_close(three, one, rtol=0, atol=1e-5)
    assert seen == [(i + 1, len(seen)) for i in range(len(seen))] and len(seen) == 6
    with pytest.raises(InputError, match="vq_batch must be at least 1"):
        super_resolve(pipe, lr, tile=32, vq_batch=0)


@pytest.mark.slow
def test_one_256px_tile_of_the_tiny_autoencoder_stays_in_bounded_memory():
    """The mid-block attention of a 256 px tile spans 65,536 latent positions: a full score matrix
    would be 17 GB. In query chunks the whole tile (1024 x 1024 SR) peaks near 0.9 GB (measured)."""
    from bimaco_deploy.pipeline.memory import PeakRSS

    cfg = load_config("bimacosr-tiny")
    vq = build_autoencoder(cfg.autoencoder, seed=2)
    small = OneStepSR(identity_unet, vq, cfg, vq_dtype=torch.float32)
    lr = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with PeakRSS() as mem:
        sr = super_resolve(small, lr, seed=0)
    assert sr.shape == (1, 3, 1024, 1024)
    assert mem.peak_mib - mem.start_mib < 2048, f"one 256 px tile took {mem.peak_mib - mem.start_mib:.0f} MiB"


def test_autoencoder_batch_is_one_tile_on_a_cpu_and_the_estimate_covers_the_measured_peak(pipe):
    from bimaco_deploy.pipeline.tiling import autoencoder_tile_bytes, default_vq_batch

    assert default_vq_batch(pipe, 256, 256) == 1
    published = OneStepSR(identity_unet, build_autoencoder(load_config("bimacosr").autoencoder, seed=0),
                          load_config("bimacosr"), vq_dtype=torch.float32)
    # the float32 decoder of a 256 px tile measured 6.6 GB peak RSS (3.5 GB the encoder): the GPU
    # batch divides a quarter of free memory by this, so it must not sit far below the measured peak
    assert 6.0e9 < autoencoder_tile_bytes(published, 256, 256) < 8.0e9
