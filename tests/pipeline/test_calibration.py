"""Calibration folders: refused clearly when unusable; samples as inference makes them; the graph cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from bimaco_deploy.errors import InputError
from bimaco_deploy.models.config import load_config
from bimaco_deploy.pipeline.calibration import (CALIB_CROP, MIN_CALIB_SIDE, calibration_digest, calibration_images,
                                                calibration_samples, ensure_vq_graphs)

from conftest import REPO

IMAGES = REPO / "calib" / "images"


def _png(path, h, w, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_a_missing_or_empty_folder_or_a_file_is_refused_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"nope: calibration folder not found"):
        calibration_images(tmp_path / "nope")
    (tmp_path / ".hidden.png").write_bytes(b"x")  # hidden files are not inputs
    with pytest.raises(InputError, match=rf"{tmp_path}: no images to calibrate on; expected LR images"):
        calibration_images(tmp_path)
    _png(tmp_path / "a.png", 40, 40)
    with pytest.raises(InputError, match=r"a.png: --calib expects a folder of LR images, not a file"):
        calibration_images(tmp_path / "a.png")


def test_unreadable_and_too_small_images_are_all_named(tmp_path):
    _png(tmp_path / "ok.png", 48, 64)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError, match=r"2 of 3 files cannot be read as images") as err:
        calibration_images(tmp_path)
    assert "notes.txt" in str(err.value) and "broken.png" in str(err.value)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "broken.png").unlink()
    _png(tmp_path / "tiny.png", MIN_CALIB_SIDE - 1, 80)
    with pytest.raises(InputError, match=rf"too small to calibrate on .*tiny.png \({MIN_CALIB_SIDE - 1}x80\)"):
        calibration_images(tmp_path)


def test_samples_are_64px_crops_padded_and_upsampled_as_inference_feeds_the_encoder(tmp_path):
    _png(tmp_path / "wide.png", 40, 150)  # 1 row x 3 columns of crops, the height padded
    imgs = calibration_images(tmp_path)
    samples = calibration_samples(imgs, sf=4)
    assert len(samples) == 3 and all(s.shape == (1, 3, 4 * CALIB_CROP, 4 * CALIB_CROP) for s in samples)
    assert all(s.dtype == np.float32 for s in samples)
    # the same pixels give the same samples; the digest follows the pixels
    assert calibration_digest(imgs) == calibration_digest(calibration_images(tmp_path))
    _png(tmp_path / "wide.png", 40, 150, seed=1)
    assert calibration_digest(imgs) != calibration_digest(calibration_images(tmp_path))


def test_int8_graphs_are_made_once_and_remade_when_the_calibration_set_changes(tmp_path):
    cfg = load_config("bimacosr-tiny")
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(IMAGES / "astronaut_64x64.png", calib)
    said = []
    first = ensure_vq_graphs(cfg, None, "int8", seed=1, calib=calib, say=said.append, cache=tmp_path / "cache")
    assert any("calibrating INT8 VQ graphs on 1 images" in s for s in said)
    said.clear()
    assert ensure_vq_graphs(cfg, None, "int8", seed=1, calib=calib, say=said.append, cache=tmp_path / "cache") == first
    assert said and said[0].startswith("using the cached int8 VQ graphs")
    shutil.copy(IMAGES / "camera_64x64.png", calib)
    second = ensure_vq_graphs(cfg, None, "int8", seed=1, calib=calib, cache=tmp_path / "cache")
    assert second != first and (second / "vq_graphs.json").is_file()
    # other weights, other graphs
    assert ensure_vq_graphs(cfg, None, "fp32", seed=2, cache=tmp_path / "cache") != \
        ensure_vq_graphs(cfg, None, "fp32", seed=1, cache=tmp_path / "cache")
    # nothing half-written is left beside the cache entries
    assert not [p for p in (tmp_path / "cache" / "vq").iterdir() if p.name.startswith(".")]


def test_cached_graphs_say_which_weights_they_carry(tmp_path):
    from bimaco_deploy.export import provenance
    from bimaco_deploy.export.artifacts import VQ_ENCODER_FILE

    folder = ensure_vq_graphs(load_config("bimacosr-tiny"), None, "fp32", seed=7, cache=tmp_path)
    meta = provenance.read_metadata(folder / VQ_ENCODER_FILE)
    assert provenance.describe_weights(meta) == "seeded random weights (seed 7)"
