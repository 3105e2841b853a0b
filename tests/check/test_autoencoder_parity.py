"""Level 3 with a low-precision autoencoder: its SR against the fp32 pipeline's, gated by --min-psnr."""

from __future__ import annotations

import shutil

import pytest

from bimaco_deploy.check.parity import Thresholds, check, level3_autoencoder
from bimaco_deploy.errors import BackendUnavailable
from bimaco_deploy.models.precision import cpu_bf16_native

from conftest import REPO, need

IMAGES = [REPO / "calib" / "images" / "astronaut_64x64.png", REPO / "calib" / "images" / "rocket_48x72.png"]


@pytest.fixture(scope="module")
def small_calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for name in ("astronaut_whole", "chelsea_face", "coffee_cup", "text_line"):
        shutil.copy(REPO / "calib" / "calibration" / f"{name}.png", folder)
    return folder


def _run(precision, calib=None, **kw):
    return check(need("config.yaml"), need("bimacosr_tiny.pth"), None, backend="torch", vq_ckpt=need("vqgan.pth"),
                 levels=[3], images=IMAGES, vq_precision=precision, calib=calib, **kw)


def test_int8_autoencoder_of_the_tiny_fixture_is_reported_per_image_and_close_to_fp32(small_calib):
    report = _run("int8", small_calib)
    vq = report["level3"]["autoencoder"]
    assert report["vq_precision"] == "int8" and vq["precision"] == "int8"
    assert [r["image"] for r in vq["images"]] == [p.name for p in IMAGES]
    for r in vq["images"]:
        # measured 32.0 and 32.3 dB with these four calibration images (random weights; see BENCHMARKS.md)
        assert r["psnr_db"] >= 30.0, r
        assert 0.0 < r["max_abs"] < 0.5
        assert 0.0 <= r["index_change"] <= 1.0 and 0.0 <= r["encoder_index_change"] <= 1.0
        assert r["latent_psnr_db"] > 25.0


def test_bf16_autoencoder_is_within_bfloat16_rounding_of_fp32():
    if not cpu_bf16_native()[0]:
        with pytest.raises(BackendUnavailable, match="bf16 needs a CPU that computes bfloat16 natively"):
            _run("bf16")
        return
    vq = _run("bf16")["level3"]["autoencoder"]
    assert all(r["psnr_db"] >= 40.0 for r in vq["images"]), vq["images"]  # measured 44.3 and 44.6 dB


def test_min_psnr_gates_the_autoencoder_and_fp32_adds_no_autoencoder_part(small_calib):
    from bimaco_deploy.models import load_config, load_unet
    from bimaco_deploy.models.autoencoder import load_autoencoder
    from bimaco_deploy.models.precision import TorchVQ

    cfg = load_config(need("config.yaml"))
    model = load_unet(cfg, need("bimacosr_tiny.pth"))
    vq = load_autoencoder(cfg.autoencoder, need("vqgan.pth"))
    ref = TorchVQ(vq, "fp32")
    same = level3_autoencoder(cfg, model, ref, TorchVQ(vq, "fp32"), "fp32", IMAGES[:1], Thresholds(min_psnr_db=60.0), 0)
    assert same["passed"] and same["images"][0]["psnr_db"] == float("inf")
    if cpu_bf16_native()[0]:
        low = level3_autoencoder(cfg, model, ref, TorchVQ(vq, "bf16"), "bf16", IMAGES[:1], Thresholds(min_psnr_db=60.0), 0)
        assert not low["passed"] and low["min_psnr_db"] < 60.0
    assert "autoencoder" not in _run("fp32")["level3"]
