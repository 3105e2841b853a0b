"""``infer``: one file or a whole folder, validated before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bimaco_deploy.errors import InputError
from bimaco_deploy.models.autoencoder import build_autoencoder
from bimaco_deploy.models.config import load_config
from bimaco_deploy.pipeline.images import read_image, read_image_uint8, save_png
from bimaco_deploy.pipeline.infer import infer
from bimaco_deploy.pipeline.onestep import OneStepSR
from bimaco_deploy.pipeline.tiling import super_resolve


def identity_unet(x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """A stand-in denoiser (pred_x0 = its input): infer does not depend on what the UNet computes."""
    return x.clone()


@pytest.fixture(scope="module")
def pipe() -> OneStepSR:
    cfg = load_config("bimacosr-tiny")
    return OneStepSR(identity_unet, build_autoencoder(cfg.autoencoder, seed=4), cfg, vq_dtype=torch.float32, pad_multiple=32)


def _write(path, h, w, seed):
    save_png(path, np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    return path


def test_a_folder_is_processed_in_sorted_order_with_4x_outputs(tmp_path, pipe):
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "b.png", 12, 8, 1)
    Image.open(_write(src / "a.png", 8, 16, 2)).convert("RGB").save(src / "c.jpg")
    (src / ".DS_Store").write_bytes(b"\0\1")
    (src / "sub").mkdir()
    report = infer(pipe, src, tmp_path / "out", seed=3, progress=False)
    assert [i.input.name for i in report.items] == ["a.png", "b.png", "c.jpg"]
    assert sorted(p.name for p in report.skipped) == [".DS_Store", "sub"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]
    assert read_image_uint8(tmp_path / "out" / "b.png").shape == (48, 32, 3)
    assert report.items[0].lr_size == (8, 16) and report.items[0].sr_size == (32, 64)
    # each output is exactly what the library computes for that image and seed
    expected = super_resolve(pipe, read_image(src / "b.png"), seed=3)
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "out" / "b.png"), read_image_uint8(save_png(tmp_path / "x.png", expected)))


def test_one_unreadable_input_means_nothing_is_written(tmp_path, pipe):
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "a.png", 8, 8, 1)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (src / "readme.txt").write_text("hello")
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        infer(pipe, src, out, progress=False)
    assert "broken.png" in str(err.value) and "readme.txt" in str(err.value) and "nothing was written" in str(err.value)
    assert not out.exists()


def test_a_single_file_goes_to_a_png_path_or_into_a_folder(tmp_path, pipe):
    img = _write(tmp_path / "lr.png", 6, 10, 5)
    report = infer(pipe, img, tmp_path / "sr.png", progress=False)
    assert read_image_uint8(tmp_path / "sr.png").shape == (24, 40, 3) and len(report.items) == 1
    folder = tmp_path / "results"
    folder.mkdir()
    infer(pipe, img, folder, progress=False)
    np.testing.assert_array_equal(read_image_uint8(folder / "lr.png"), read_image_uint8(tmp_path / "sr.png"))


def test_bad_destinations_are_refused_before_writing(tmp_path, pipe):
    img = _write(tmp_path / "lr.png", 6, 6, 5)
    with pytest.raises(InputError, match=r"\.png file"):
        infer(pipe, img, tmp_path / "sr.jpg", progress=False)
    with pytest.raises(InputError, match="overwrite its own input"):
        infer(pipe, tmp_path, tmp_path, progress=False)
    with pytest.raises(InputError, match="not found"):
        infer(pipe, tmp_path / "nope", tmp_path / "o", progress=False)
    src = tmp_path / "clash"
    src.mkdir()
    _write(src / "x.png", 4, 4, 1)
    Image.open(src / "x.png").save(src / "x.bmp")
    with pytest.raises(InputError, match=r"x\.bmp, x\.png -> x\.png"):
        infer(pipe, src, tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "sr.jpg").exists()


def test_progress_bar_runs(tmp_path, pipe, capsys):
    img = _write(tmp_path / "lr.png", 4, 4, 9)
    infer(pipe, img, tmp_path / "sr.png", progress=True)
    assert (tmp_path / "sr.png").is_file()


@pytest.mark.slow
def test_cli_infer_writes_the_image(tmp_path):
    from typer.testing import CliRunner

    from bimaco_deploy.cli import app

    img = _write(tmp_path / "lr.png", 8, 12, 3)
    args = ["infer", str(img), str(tmp_path / "sr.png"), "--config", "bimacosr-tiny", "--vq-precision", "fp32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_image_uint8(tmp_path / "sr.png").shape == (32, 48, 3)


def test_cli_infer_reports_a_missing_input_before_loading_models(tmp_path):
    from typer.testing import CliRunner

    from bimaco_deploy.cli import app

    bad = CliRunner().invoke(app, ["infer", str(tmp_path / "missing.png"), str(tmp_path / "x.png"), "--config", "bimacosr-tiny"])
    assert bad.exit_code == 2 and "missing.png" in bad.output
    assert not (tmp_path / "x.png").exists()
