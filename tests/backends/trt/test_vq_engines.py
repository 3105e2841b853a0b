"""TensorRT VQ engines: the choices that need no TensorRT (build plan per version and precision,
profiles, file names, graph checks); the build itself runs where TensorRT exists."""

from __future__ import annotations

import onnx
import pytest

from bimaco_deploy.backends.tensorrt.vq import (TRT_VQ_PRECISIONS, check_vq_graph, vq_build_plan, vq_engine_paths,
                                                vq_profiles)
from bimaco_deploy.errors import ArtifactError, BackendUnavailable, InputError
from bimaco_deploy.export.layer_params import state_to_numpy
from bimaco_deploy.export.vq import vq_graphs
from bimaco_deploy.models.autoencoder import build_autoencoder
from bimaco_deploy.models.config import load_config


@pytest.mark.parametrize("version, precision, graph, typed, fp16, int8, calibrator", [
    ("10.3.0", "fp32", "fp32", False, False, False, False),
    ("10.3.0", "fp16", "fp32", False, True, False, False),
    ("10.13.2", "int8", "fp32", False, True, True, True),  # implicit INT8 through polygraphy's calibrator
    ("11.1.0", "fp16", "fp16", True, False, False, False),  # strongly typed: the graph decides
    ("11.1.0", "int8", "int8", True, False, False, False),  # from the QDQ graphs
])
def test_the_build_plan_follows_the_tensorrt_version(version, precision, graph, typed, fp16, int8, calibrator):
    plan = vq_build_plan(version, precision)
    assert (plan.graph_precision, plan.strongly_typed, plan.fp16_flag, plan.int8_flag, plan.calibrator) == \
        (graph, typed, fp16, int8, calibrator)


def test_unknown_precisions_and_old_tensorrt_are_refused():
    with pytest.raises(InputError, match="TensorRT VQ engines come in fp16, fp32, int8"):
        vq_build_plan("10.3.0", "bf16")
    with pytest.raises(BackendUnavailable, match="TensorRT 8.6.1 is too old"):
        vq_build_plan("8.6.1", "fp16")
    assert set(TRT_VQ_PRECISIONS) == {"fp16", "fp32", "int8"}


def test_profiles_map_lr_sizes_to_the_encoder_image_and_the_decoder_latent():
    p = vq_profiles((64, 64), (256, 256), (256, 384), sf=4, downscale=4, batch=(1, 2, 4))
    assert p["encoder"]["image"] == {"min": (1, 3, 256, 256), "opt": (2, 3, 1024, 1024), "max": (4, 3, 1024, 1536)}
    assert p["decoder"]["latent"] == {"min": (1, 3, 64, 64), "opt": (2, 3, 256, 256), "max": (4, 3, 256, 384)}
    with pytest.raises(InputError, match="min <= opt <= max"):
        vq_profiles((256, 256), (64, 64), (256, 256))


def test_engine_files_sit_beside_the_unet_engine():
    enc, dec = vq_engine_paths("/e/unet.plan", "int8")
    assert (str(enc), str(dec)) == ("/e/unet_vq_encoder_int8.plan", "/e/unet_vq_decoder_int8.plan")


def test_a_graph_of_the_wrong_precision_names_the_export_to_make(tmp_path):
    cfg = load_config("bimacosr-tiny")
    enc, _, _ = vq_graphs(cfg.autoencoder, state_to_numpy(build_autoencoder(cfg.autoencoder, seed=0).state_dict()), "fp16")
    onnx.save(enc, str(tmp_path / "vq_encoder.onnx"))
    check_vq_graph(tmp_path / "vq_encoder.onnx", "fp16")
    with pytest.raises(ArtifactError, match=r"is fp16; this TensorRT builds from int8 VQ graphs .*--vq-precision int8"):
        check_vq_graph(tmp_path / "vq_encoder.onnx", "int8")
    with pytest.raises(ArtifactError, match="not found: export the VQ graphs first"):
        check_vq_graph(tmp_path / "missing.onnx", "fp32")


@pytest.mark.tensorrt
def test_fp16_vq_engines_build_and_run_close_to_onnx_runtime(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (NVIDIA's index); the VQ engine build "
                                                 "runs where it is")
    from bimaco_deploy.backends.tensorrt.vq import build_vq_engines
    from bimaco_deploy.export.exporter import export

    art = tmp_path / "art"
    export("bimacosr-tiny", None, art, seed=0, print_report=False, vq_precision="fp32")
    report = build_vq_engines(art, tmp_path / "unet.plan", "fp16", min_lr=(32, 32), opt_lr=(64, 64), max_lr=(64, 64))
    assert report["encoder"]["tensorrt"] == trt.__version__
    assert all(p.is_file() for p in vq_engine_paths(tmp_path / "unet.plan", "fp16"))
