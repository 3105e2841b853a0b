"""infer reports as it goes: a line per image as it finishes, per-tile progress with an ETA for a large
image, a JSON report rewritten after each image; existing outputs need force; a failed allocation
names the image and a smaller tile."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from bimaco_deploy.errors import OutOfMemory, OutputError
from bimaco_deploy.models.autoencoder import build_autoencoder
from bimaco_deploy.models.config import load_config
from bimaco_deploy.pipeline.images import save_png
from bimaco_deploy.pipeline.infer import infer
from bimaco_deploy.pipeline.onestep import OneStepSR
from bimaco_deploy.progress import Progress


def identity_unet(x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """A stand-in denoiser: infer does not depend on what the UNet computes."""
    return x.clone()


def greedy_unet(x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """A UNet that asks for far more memory than any machine has: a real allocation failure."""
    torch.empty(1 << 50, dtype=torch.uint8)
    return x


@pytest.fixture(scope="module")
def vq():
    return build_autoencoder(load_config("bimacosr-tiny").autoencoder, seed=4)


def _pipe(vq, unet=identity_unet) -> OneStepSR:
    return OneStepSR(unet, vq, load_config("bimacosr-tiny"), vq_dtype=torch.float32, pad_multiple=32)


def _write(path, h, w, seed=0):
    save_png(path, np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    return path


def test_each_image_is_reported_as_it_finishes_and_the_json_follows(vq, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        _write(src / f"{i}.png", 8, 8, i)
    report_path = tmp_path / "r.json"
    seen = []

    def on_item(item):
        # the image is on disk and the JSON already lists it when we hear about it
        assert item.output.is_file()
        seen.append((item.input.name, len(json.loads(report_path.read_text())["images"])))

    rep = infer(_pipe(vq), src, tmp_path / "out", progress=False, on_item=on_item, report_path=report_path,
                run_info={"backend": "test"})
    assert seen == [("0.png", 1), ("1.png", 2), ("2.png", 3)]
    final = json.loads(report_path.read_text())
    assert final["status"] == "done" and final["backend"] == "test" and len(final["images"]) == 3
    assert final["images"][0]["sr_size"] == [32, 32] and final["seconds"] >= rep.items[0].seconds


def test_a_large_image_shows_per_tile_progress_with_eta(vq, tmp_path):
    img = _write(tmp_path / "big.png", 20, 20)
    stream = io.StringIO()
    rep = infer(_pipe(vq), img, tmp_path / "sr.png", tile=8, stride=6, progress=Progress("plain", stream, interval=0.0))
    assert rep.items[0].tiles == 9
    lines = stream.getvalue().splitlines()
    assert "  tiles of big.png (9 tiles) ..." in lines
    tile_lines = [ln for ln in lines if ln.startswith("  tiles of big.png:")]
    assert len(tile_lines) == 9 and "ETA" in tile_lines[0] and tile_lines[-1].startswith("  tiles of big.png: 9/9")
    assert lines[-1].startswith("super-resolving: 1/1 images")


def test_existing_outputs_are_replaced_only_with_force(vq, tmp_path):
    img = _write(tmp_path / "lr.png", 8, 8)
    out = tmp_path / "sr.png"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        infer(_pipe(vq), img, out, progress=False)
    assert out.read_bytes() == b"old"
    infer(_pipe(vq), img, out, progress=False, force=True)
    assert out.read_bytes()[:4] == b"\x89PNG"
    folder = tmp_path / "o"
    folder.mkdir()
    (folder / "lr.png").write_bytes(b"old")
    with pytest.raises(OutputError, match=r"1 output\(s\) already exist \(lr\.png\)"):
        infer(_pipe(vq), tmp_path, folder, progress=False)


def test_a_folder_into_a_png_name_is_refused(vq, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "a.png", 8, 8)
    with pytest.raises(OutputError, match="a folder is written here, but the name looks like a file"):
        infer(_pipe(vq), src, tmp_path / "out.png", progress=False)
    assert not (tmp_path / "out.png").exists()


def test_a_failed_allocation_names_the_image_and_a_smaller_tile(vq, tmp_path):
    img = _write(tmp_path / "lr.png", 40, 30)
    report_path = tmp_path / "r.json"
    with pytest.raises(OutOfMemory) as err:
        infer(_pipe(vq, greedy_unet), img, tmp_path / "sr.png", progress=False, report_path=report_path)
    msg = str(err.value)
    assert msg.startswith(f"{img}: out of memory super-resolving this 40x30 image")
    assert "an allocation of 1024.0 TiB failed" in msg and "--tile 20" in msg
    assert not (tmp_path / "sr.png").exists()
    assert json.loads(report_path.read_text())["status"] == "failed: OutOfMemory"
