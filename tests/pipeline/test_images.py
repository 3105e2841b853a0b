"""Image reading, uint8 conversion like the original's tensor2img, and atomic PNG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bimaco_deploy.errors import InputError
from bimaco_deploy.pipeline.images import read_image, read_image_uint8, save_png, tensor_to_uint8, uint8_to_tensor


def _rgb(h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_png_round_trip_is_lossless_and_scaled_by_255(tmp_path):
    img = _rgb()
    path = save_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_image_uint8(path), img)
    x = read_image(path)
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(img.astype(np.float32) / np.float32(255)).permute(2, 0, 1)[None])
    np.testing.assert_array_equal(tensor_to_uint8(x), img)


def test_grey_and_rgba_images_become_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([_rgb(3, 4), np.full((3, 4), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "rgba.png"), rgba[:, :, :3])


def test_unreadable_files_are_input_errors_naming_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match="notes.png"):
        read_image(text)
    data = (save_png(tmp_path / "full.png", _rgb(64, 64))).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        read_image(cut)
    with pytest.raises(InputError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(InputError, match="deep.png.*8-bit"):
        read_image(tmp_path / "deep.png")


def test_tensor_to_uint8_clamps_and_rounds_half_to_even():
    # values whose float32 product with 255 is exactly k + 0.5
    halves = []
    for k in (0, 1, 2, 126, 127, 253):
        v = np.float32((k + 0.5) / 255)
        while np.float32(v * np.float32(255)) < k + 0.5:
            v = np.nextafter(v, np.float32(1))
        while np.float32(v * np.float32(255)) > k + 0.5:
            v = np.nextafter(v, np.float32(0))
        assert np.float32(v * np.float32(255)) == k + 0.5
        halves.append(v)
    x = torch.tensor(halves + [-0.3, 1.7, 0.0, 1.0], dtype=torch.float32).view(1, -1, 1).expand(3, -1, 1)
    out = tensor_to_uint8(x)[:, 0, 0]
    assert out.tolist() == [0, 2, 2, 126, 128, 254, 0, 255, 0, 255]


def test_uint8_to_tensor_rejects_other_arrays():
    with pytest.raises(InputError, match="uint8"):
        uint8_to_tensor(np.zeros((4, 4, 3), np.float32))


def test_save_is_atomic_and_leaves_no_temp_file_on_failure(tmp_path):
    dest = tmp_path / "out.png"
    save_png(dest, _rgb(4, 4, seed=1))
    before = dest.read_bytes()
    with pytest.raises(InputError):
        save_png(dest, np.zeros((4, 4), np.uint8))  # not [H, W, 3]
    with pytest.raises(InputError):
        save_png(dest, torch.zeros(2, 3, 4, 4))  # a batch, not one image
    with pytest.raises(ValueError):
        save_png(dest, np.zeros((0, 4, 3), np.uint8))  # fails inside the PNG encoder, after the temp file exists
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_save_creates_the_folder_and_accepts_a_tensor(tmp_path):
    x = torch.rand(1, 3, 6, 5)
    path = save_png(tmp_path / "new" / "deep" / "x.png", x)
    np.testing.assert_array_equal(read_image_uint8(path), tensor_to_uint8(x))


def test_committed_calibration_images_are_small_rgb_lr_images():
    folder = Path(__file__).resolve().parents[2] / "calib" / "images"
    files = sorted(folder.glob("*.png"))
    assert len(files) >= 6, f"calib images missing in {folder} (python calib/make_calib.py)"
    assert sum(f.stat().st_size for f in files) < 200_000
    for f in files:
        img = read_image_uint8(f)
        h, w = (int(v) for v in f.stem.rsplit("_", 1)[1].split("x"))
        assert img.shape == (h, w, 3), f.name
        assert img.std() > 10, f"{f.name} looks blank"
