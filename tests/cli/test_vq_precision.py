"""--vq-precision: one word on export, infer, check and bench; INT8 through all of them; bad input exits 2
naming what was expected, with nothing half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bimaco_deploy.cli import app

from conftest import REPO, need


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for name in ("astronaut_whole", "coffee_cup"):
        shutil.copy(REPO / "calib" / "calibration" / f"{name}.png", folder)
    return folder


@pytest.fixture(scope="module")
def lr(tmp_path_factory):
    path = tmp_path_factory.mktemp("lr") / "lr.png"
    shutil.copy(REPO / "calib" / "images" / "chelsea_40x48.png", path)
    return path


def test_int8_runs_through_infer_check_and_bench(tmp_path, calib, lr):
    tiny = ["--config", need("config.yaml"), "--ckpt", need("bimacosr_tiny.pth"), "--vq-ckpt", need("vqgan.pth")]
    r = _invoke("infer", lr, tmp_path / "sr.png", *tiny, "--backend", "torch", "--vq-precision", "int8", "--calib", calib,
                "--json", tmp_path / "infer.json")
    assert r.exit_code == 0, r.output
    assert "calibrating INT8 VQ graphs on 2 images" in r.output and "(int8, ONNX Runtime)" in r.output
    assert Image.open(tmp_path / "sr.png").size == (192, 160)
    info = json.loads((tmp_path / "infer.json").read_text())
    assert info["autoencoder_precision"] == "int8" and info["images"][0]["peak_rss_mib"] > 0

    r = _invoke("check", *tiny, "--backend", "torch", "--levels", "3", "--images", lr, "--vq-precision", "int8",
                "--calib", calib, "--min-psnr", "20", "--json", tmp_path / "check.json")
    assert "int8 autoencoder vs fp32" in r.output, r.output
    report = json.loads((tmp_path / "check.json").read_text())
    row = report["level3"]["autoencoder"]["images"][0]
    assert row["psnr_db"] >= 20 and "index_change" in row
    assert "using the cached int8 VQ graphs" in r.output  # made once, by infer

    r = _invoke("bench", "--pipeline", "--config", "bimacosr-tiny", "--backend", "torch", "--vq-precision", "int8",
                "--calib", calib, "--lr-size", "32", "--repeats", "1", "--warmup", "0", "--threads", "1",
                "--json", tmp_path / "bench.json")
    assert r.exit_code == 0, r.output
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["vq_precision"] == "int8" and bench["end_to_end_speedup"] > 0
    assert set(bench["pipelines"]["binary"]["stages_ms"]) == {"pre", "encode", "unet", "decode", "post", "total"}


def test_export_int8_writes_quantized_graphs_and_the_whole_system_size(tmp_path, calib):
    r = _invoke("export", "--random-init", "--config", "bimacosr-tiny", "--out", tmp_path / "art",
                "--vq-precision", "int8", "--calib", calib)
    assert r.exit_code == 0, r.output
    assert "calibrating the INT8 autoencoder on 2 images" in r.output and "whole system" in r.output
    report = json.loads((tmp_path / "art" / "export_report.json").read_text())
    assert report["vq_precision"] == "int8" and report["vq_calibration"]["source"] == str(calib)
    rows = {row["vq_precision"]: row for row in report["system_size"]["by_vq_precision"]}
    assert rows["int8"]["source"] == "files" and rows["fp32"]["source"] == "estimate"
    # the onnxruntime backend runs the export's int8 graphs, and refuses another precision for them
    out = tmp_path / "sr.png"
    lr_img = REPO / "calib" / "images" / "chelsea_40x48.png"
    r = _invoke("infer", lr_img, out, "--backend", "onnxruntime", "--artifacts", tmp_path / "art", "--vq-precision", "int8")
    assert r.exit_code == 0, r.output
    r = _invoke("infer", lr_img, tmp_path / "sr2.png", "--backend", "onnxruntime", "--artifacts", tmp_path / "art")
    assert r.exit_code == 2 and "holds int8 VQ graphs, --vq-precision asks for fp32" in r.output
    assert not (tmp_path / "sr2.png").exists()


@pytest.mark.parametrize("setup, expected", [
    ("empty", "no images to calibrate on"),
    ("small", "too small to calibrate on"),
    ("text", "cannot be read as images"),
    ("missing", "calibration folder not found"),
])
def test_an_unusable_calibration_folder_exits_2_and_writes_nothing(tmp_path, lr, setup, expected):
    folder = tmp_path / "calib"
    if setup != "missing":
        folder.mkdir()
    if setup == "small":
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "small.png")
    if setup == "text":
        (folder / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    r = _invoke("export", "--random-init", "--config", "bimacosr-tiny", "--out", out, "--vq-precision", "int8",
                "--calib", folder)
    assert r.exit_code == 2 and expected in r.output, r.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == (["calib"] if setup != "missing" else [])
    r = _invoke("infer", lr, tmp_path / "sr.png", "--config", "bimacosr-tiny", "--backend", "torch",
                "--vq-precision", "int8", "--calib", folder)
    assert r.exit_code == 2 and expected in r.output, r.output
    assert not (tmp_path / "sr.png").exists()


@pytest.mark.parametrize("args, expected", [
    (["--vq-precision", "fp8"], "--vq-precision must be one of fp32, fp16, bf16, int8, got 'fp8'"),
    (["--vq-precision", "bf16", "--backend", "onnxruntime"], "--vq-precision bf16 is not available on --backend onnxruntime"),
])
def test_a_precision_a_backend_cannot_run_exits_2_naming_what_runs(tmp_path, lr, args, expected):
    r = _invoke("export", "--random-init", "--config", "bimacosr-tiny", "--out", tmp_path / "art", "--no-vq")
    assert r.exit_code == 0, r.output
    backend = [] if "--backend" in args else ["--backend", "torch"]
    artifacts = ["--artifacts", tmp_path / "art"] if "onnxruntime" in args else ["--config", "bimacosr-tiny"]
    r = _invoke("infer", lr, tmp_path / "sr.png", *artifacts, *backend, *args)
    assert r.exit_code == 2 and expected in r.output, r.output
    assert not (tmp_path / "sr.png").exists()


def test_vq_options_outside_the_pipeline_bench_are_refused():
    r = _invoke("bench", "--config", "bimacosr-tiny", "--vq-precision", "int8")
    assert r.exit_code == 2 and "apply to --pipeline" in r.output
