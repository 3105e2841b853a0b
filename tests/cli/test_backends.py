"""Every backend name means the same thing to infer and bench, and bad choices fail cleanly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bimaco_deploy.cli import app


@pytest.fixture(scope="module")
def lr_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("lr") / "lr.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_artifacts(tiny_dir, tmp_path_factory):
    from bimaco_deploy.export.exporter import export

    out = tmp_path_factory.mktemp("art") / "tiny"
    export(tiny_dir / "config.yaml", tiny_dir / "bimacosr_tiny.pth", out, vq_ckpt=tiny_dir / "vqgan.pth",
           progress=False, print_report=False)
    return out


@pytest.mark.parametrize("backend", ["torch-ref", "torch", "onnxruntime"])
def test_infer_runs_on_every_cpu_backend(backend, tiny_dir, tiny_artifacts, lr_image, tmp_path):
    out = tmp_path / "sr.png"
    args = ["infer", str(lr_image), str(out), "--config", str(tiny_dir / "config.yaml"),
            "--vq-ckpt", str(tiny_dir / "vqgan.pth"), "--backend", backend, "--vq-precision", "fp32"]
    # the torch backends build the UNet from the checkpoint; onnxruntime's comes from the artifacts
    args += ["--artifacts", str(tiny_artifacts)] if backend == "onnxruntime" else \
        ["--ckpt", str(tiny_dir / "bimacosr_tiny.pth")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (192, 160)


def test_onnxruntime_backend_without_artifacts_is_a_clear_error(tiny_dir, lr_image, tmp_path):
    out = tmp_path / "sr.png"
    result = CliRunner().invoke(app, ["infer", str(lr_image), str(out), "--config", str(tiny_dir / "config.yaml"),
                                      "--backend", "onnxruntime"])
    assert result.exit_code == 2
    assert "--artifacts" in result.output
    assert not out.exists()


def test_unknown_backend_is_refused(tiny_dir, lr_image, tmp_path):
    result = CliRunner().invoke(app, ["infer", str(lr_image), str(tmp_path / "sr.png"), "--config", "bimacosr-tiny",
                                      "--backend", "cudnn-magic"])
    assert result.exit_code == 2 and "unknown backend 'cudnn-magic'" in result.output


def test_bench_reports_backend_beside_float_baseline(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--backend", "torch", "--config", "bimacosr-tiny", "--size", "32x32",
                                      "--warmup", "1", "--repeats", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"torch", "float-baseline"}
    for r in report["results"].values():
        assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert report["speedup_vs_float"] > 0
    assert "| float-baseline |" in result.output


def test_bench_rejects_a_size_the_model_cannot_take(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--config", "bimacosr-tiny", "--size", "48x32"])
    assert result.exit_code == 2 and "multiples of 32" in result.output


def test_onnxruntime_bench_times_the_float_model_exported_the_same_way(tmp_path):
    art = tmp_path / "art"
    result = CliRunner().invoke(app, ["export", "--out", str(art), "--config", "bimacosr-tiny", "--random-init",
                                      "--no-vq", "--float-baseline"])
    assert result.exit_code == 0, result.output
    report_out = tmp_path / "bench.json"
    threads_before = torch.get_num_threads()
    result = CliRunner().invoke(app, ["bench", "--backend", "onnxruntime", "--artifacts", str(art), "--config",
                                      "bimacosr-tiny", "--size", "32x32", "--warmup", "1", "--repeats", "2",
                                      "--threads", "1", "--json", str(report_out)])
    assert result.exit_code == 0, result.output
    # --threads applies to the benchmark only: everything after it keeps its float summation order
    assert torch.get_num_threads() == threads_before
    report = json.loads(report_out.read_text())
    assert set(report["results"]) == {"onnxruntime", "float-baseline"}
    assert report["baseline"].startswith("onnxruntime unet_float.onnx")
    assert "Float baseline: onnxruntime unet_float.onnx" in result.output


def test_onnxruntime_bench_without_a_float_export_says_how_to_make_one(tiny_artifacts, tmp_path):
    report_out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--backend", "onnxruntime", "--artifacts", str(tiny_artifacts),
                                      "--config", "bimacosr-tiny", "--size", "32x32", "--json", str(report_out)])
    assert result.exit_code == 2
    assert "unet_float.onnx not found" in result.output and "--float-baseline" in result.output
    assert not report_out.exists()
