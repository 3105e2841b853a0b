"""Artifacts are checked against their use, options a backend does not read are errors, and the
devices, thread counts and levels a command cannot use are refused before any work starts."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bimaco_deploy.cli import app

from conftest import need


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """Tiny artifacts from the fixture checkpoint (with VQ graphs), and published-config artifacts
    (random init, no VQ): two configs, two kinds of weights."""
    from bimaco_deploy.export.exporter import export

    root = tmp_path_factory.mktemp("use")
    old = os.umask(0o022)
    try:
        export(need("config.yaml"), need("bimacosr_tiny.pth"), root / "tiny", vq_ckpt=need("vqgan.pth"),
               progress=False, print_report=False)
    finally:
        os.umask(old)
    export(need("config.yaml"), None, root / "tiny-random", with_vq=False, progress=False, print_report=False)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "lr.png")
    return root


def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_artifact_files_and_folder_get_the_users_permissions(arts):
    assert stat.S_IMODE(os.stat(arts / "tiny").st_mode) == 0o755
    for f in (arts / "tiny").iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o644, f


def test_artifacts_record_config_contract_and_weights(arts):
    meta = {p.key: p.value for p in onnx.load(str(arts / "tiny" / "unet_portable.onnx"), load_external_data=False).metadata_props}
    assert meta["bimaco_contract_version"] == "1" and meta["config_source"].endswith("config.yaml")
    assert meta["weights"] == "checkpoint" and meta["checkpoint"] == "bimacosr_tiny.pth" and len(meta["checkpoint_sha256"]) == 64
    vq = {p.key: p.value for p in onnx.load(str(arts / "tiny" / "vq_encoder.onnx")).metadata_props}
    assert vq["weights"] == "checkpoint" and vq["checkpoint"] == "vqgan.pth"


def test_infer_onnxruntime_refuses_an_unused_ckpt(arts, tmp_path):
    out = tmp_path / "sr.png"
    r = _invoke(["infer", arts / "lr.png", out, "--backend", "onnxruntime", "--artifacts", arts / "tiny",
                 "--ckpt", "/tmp/none.pth"])
    assert r.exit_code == 2
    assert "--ckpt /tmp/none.pth is not used by --backend onnxruntime (the UNet comes from --artifacts" in r.output
    assert not out.exists()


@pytest.mark.parametrize("args,expected", [
    (["--backend", "torch", "--artifacts", "ART"], "--artifacts ART is not used by --backend torch"),
    (["--backend", "torch-ref", "--engine", "e.plan"], "--engine e.plan is not used by --backend torch-ref"),
    (["--backend", "onnxruntime", "--artifacts", "ART", "--plugin", "p.so"], "--plugin p.so is not used by --backend onnxruntime"),
])
def test_options_a_backend_does_not_read_are_errors(arts, tmp_path, args, expected):
    args = [str(arts / "tiny") if a == "ART" else a for a in args]
    expected = expected.replace("ART", str(arts / "tiny"))
    r = _invoke(["infer", arts / "lr.png", tmp_path / "sr.png", "--config", need("config.yaml"), *args])
    assert r.exit_code == 2 and expected in r.output, r.output
    assert not (tmp_path / "sr.png").exists()


def test_artifacts_of_another_config_are_refused_naming_both(arts, tmp_path):
    r = _invoke(["infer", arts / "lr.png", tmp_path / "sr.png", "--backend", "onnxruntime", "--artifacts",
                 arts / "tiny", "--config", "bimacosr"])
    assert r.exit_code == 2
    assert f"{arts / 'tiny' / 'unet_portable.onnx'} was exported with config {need('config.yaml')}" in r.output
    assert "but the command was given --config" in r.output and "bimacosr.yaml" in r.output
    assert "unet.model_channels 32 vs 160" in r.output
    r = _invoke(["check", "--artifacts", arts / "tiny", "--config", "bimacosr", "--levels", "1"])
    assert r.exit_code == 2 and "was exported with config" in r.output  # no "Gather indices out of bounds"


def test_check_refuses_artifacts_exported_from_other_weights(arts):
    r = _invoke(["check", "--artifacts", arts / "tiny-random", "--ckpt", need("bimacosr_tiny.pth"), "--levels", "1"])
    assert r.exit_code == 2
    assert "was exported from seeded random weights (seed 0), but the command was given --ckpt" in r.output
    r = _invoke(["check", "--artifacts", arts / "tiny", "--levels", "1"])
    assert r.exit_code == 2
    assert "was exported from checkpoint bimacosr_tiny.pth" in r.output and "no --ckpt" in r.output


def test_a_graph_of_another_contract_version_is_refused(arts, tmp_path):
    art = tmp_path / "old"
    shutil.copytree(arts / "tiny-random", art)
    path = art / "unet_portable.onnx"
    m = onnx.load(str(path))
    next(p for p in m.metadata_props if p.key == "bimaco_contract_version").value = "0"
    onnx.save(m, str(path))
    r = _invoke(["check", "--artifacts", art, "--levels", "1"])
    assert r.exit_code == 2 and "written for op contract v0; this bimaco-deploy implements v1" in r.output


def test_without_config_the_artifacts_config_is_used_and_said(arts, tmp_path):
    r = _invoke(["infer", arts / "lr.png", tmp_path / "sr.png", "--backend", "onnxruntime", "--artifacts",
                 arts / "tiny", "--json", tmp_path / "r.json"])
    assert r.exit_code == 0, r.output
    assert f"config: the one {arts / 'tiny' / 'unet_portable.onnx'} was exported with" in r.output
    # which autoencoder ran, and its weights
    assert "autoencoder: ONNX graphs vq_encoder.onnx + vq_decoder.onnx" in r.output and "checkpoint vqgan.pth" in r.output
    assert "random weights" not in r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "done" and report["backend"] == "onnxruntime"
    assert report["unet"].startswith("unet_portable.onnx of") and "bimacosr_tiny.pth" in report["unet"]
    (img,) = report["images"]
    assert img["lr_size"] == [20, 24] and img["sr_size"] == [80, 96] and img["seconds"] > 0 and img["tiles"] == 1


def test_random_weights_are_warned_about_and_the_torch_autoencoder_named(arts, tmp_path):
    r = _invoke(["infer", arts / "lr.png", tmp_path / "sr.png", "--config", need("config.yaml"), "--backend", "torch",
                 "--vq-precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert "warning: the UNet runs on seeded random weights" in r.output
    assert "warning: the autoencoder runs on seeded random weights (no --vq-ckpt)" in r.output
    assert "autoencoder: torch VQ autoencoder (fp32), seeded random weights (seed 0)" in r.output


@pytest.mark.parametrize("device,expected", [
    ("bogus", "--device 'bogus': expected cpu, cuda, cuda:N or auto"),
    ("cuda:x", "--device 'cuda:x': expected cpu, cuda, cuda:N or auto"),
])
def test_a_bad_device_name_is_refused(arts, tmp_path, device, expected):
    for cmd in (["infer", arts / "lr.png", tmp_path / "sr.png", "--config", need("config.yaml")],
                ["bench", "--config", "bimacosr-tiny"]):
        r = _invoke([*cmd, "--device", device])
        assert r.exit_code == 2 and expected in r.output, r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_torch_without_cuda_is_a_clear_error(arts, tmp_path):
    r = _invoke(["infer", arts / "lr.png", tmp_path / "sr.png", "--config", need("config.yaml"), "--device", "cuda"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("error: --device cuda: ")
    assert "use --device cpu" in r.output and "Torch not compiled" not in r.output
    r = _invoke(["bench", "--config", "bimacosr-tiny", "--device", "cuda", "--size", "32"])
    assert r.exit_code == 2 and "--device cuda" in r.output


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_bench_refuses_thread_counts_below_one(threads, tmp_path):
    r = _invoke(["bench", "--config", "bimacosr-tiny", "--threads", threads, "--json", tmp_path / "b.json"])
    assert r.exit_code == 2 and f"--threads {threads}: must be at least 1" in r.output
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("levels,expected", [
    ("5", "--levels 5: 5 is not a level"),
    ("1,4", "--levels 1,4: 4 is not a level"),
    ("", "--levels : no level given"),
    ("x", "--levels 'x': expected comma-separated levels"),
])
def test_check_refuses_levels_it_does_not_have(arts, tmp_path, levels, expected):
    r = _invoke(["check", "--artifacts", arts / "tiny", "--ckpt", need("bimacosr_tiny.pth"), "--levels", levels,
                 "--json", tmp_path / "c.json"])
    assert r.exit_code == 2 and expected in r.output, r.output
    assert "overall: pass" not in r.output and not (tmp_path / "c.json").exists()


def test_check_with_an_empty_image_folder_names_it(arts, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _invoke(["check", "--artifacts", arts / "tiny", "--ckpt", need("bimacosr_tiny.pth"), "--levels", "3",
                 "--images", empty, "--json", tmp_path / "c.json"])
    assert r.exit_code == 2
    assert f"--images {empty}: no images in this folder" in r.output and "calib" not in r.output
    assert "overall: pass" not in r.output and not (tmp_path / "c.json").exists()


def test_check_options_for_levels_that_do_not_run_are_errors(arts):
    r = _invoke(["check", "--artifacts", arts / "tiny", "--ckpt", need("bimacosr_tiny.pth"), "--levels", "1",
                 "--vq-ckpt", need("vqgan.pth")])
    assert r.exit_code == 2 and "--vq-ckpt is not used by --levels 1" in r.output


def test_inspect_describes_an_exported_unet_onnx(arts, tmp_path):
    out = tmp_path / "g.json"
    r = CliRunner().invoke(app, ["inspect", "--onnx", str(arts / "tiny" / "unet.onnx"), "--json", str(out)],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    info = json.loads(out.read_text())
    assert info["graph_form"] == "custom" and info["contract_version"] == "1" and info["binary_layers"] == 177
    assert info["bimaco_nodes"] == {"BinaryConv2d": 117, "BinaryLinear": 60}
    assert info["config"]["model_channels"] == 32 and info["config_source"].endswith("config.yaml")
    assert info["weights"].startswith("checkpoint bimacosr_tiny.pth")
    assert [i["name"] for i in info["inputs"]] == ["x", "timesteps", "lq"]
    sign = info["initializer_bytes"]["sign bits (1 bit per binary weight, int32 words)"]
    assert 0 < sign < info["file_bytes"]
    assert "op contract" in r.output and "v1" in r.output and "BinaryConv2d" in r.output
    # a config given with --onnx must be the one the graph carries
    r = _invoke(["inspect", "--onnx", arts / "tiny", "--config", "bimacosr"])
    assert r.exit_code == 2 and "was exported with config" in r.output


def test_inspect_writes_no_file_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _invoke(["inspect", "--config", "bimacosr-tiny"])
    assert r.exit_code == 0, r.output
    assert list(tmp_path.iterdir()) == []


def test_the_plugin_option_has_one_name_everywhere():
    names = set()
    for cmd in app.registered_commands:
        import inspect as pyinspect

        for p in pyinspect.signature(cmd.callback).parameters.values():
            decls = getattr(p.default, "param_decls", None) or ()
            names |= {d for d in decls if "plugin" in d}
    assert names == {"--plugin"}
