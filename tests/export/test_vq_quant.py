"""INT8 QDQ graphs of the autoencoder: valid ONNX, deterministic calibration, close to float32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bimaco_deploy.export.layer_params import state_to_numpy
from bimaco_deploy.export.vq import graph_precision, vq_graphs
from bimaco_deploy.export.vq_quant import RECIPE, activation_scales, check_quantized
from bimaco_deploy.models.autoencoder import build_autoencoder
from bimaco_deploy.models.config import load_config
from bimaco_deploy.pipeline.calibration import DEFAULT_CALIB_DIR, calibration_images, calibration_samples

from conftest import REPO


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("bimacosr-tiny")
    vq = build_autoencoder(cfg.autoencoder, seed=5)
    # two photographs, one 64 px crop each: enough to exercise calibration in seconds
    folder = REPO / "calib" / "images"
    images = [im for im in calibration_images(folder) if im[0].name in ("astronaut_64x64.png", "camera_64x64.png")]
    samples = calibration_samples(images, sf=cfg.diffusion.sf)
    return cfg, vq, samples


@pytest.fixture(scope="module")
def int8_graphs(tiny):
    cfg, vq, samples = tiny
    return vq_graphs(cfg.autoencoder, state_to_numpy(vq.state_dict()), "int8", samples=samples)


def test_quantized_graphs_pass_the_checker_and_strict_shape_inference(int8_graphs):
    enc, dec, info = int8_graphs
    for m, what in ((enc, "encoder"), (dec, "decoder")):
        check_quantized(m, what)  # onnx.checker full_check + strict, type-checked shape inference
        assert graph_precision(m) == "int8"
        ops = {n.op_type for n in m.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
        int8_weights = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
        assert len(int8_weights) >= 5, f"{what}: convolution weights are not stored in INT8"
        # GroupNorm and attention stay in float: no Q/DQ feeds their inputs directly
        producers = {o: n.op_type for n in m.graph.node for o in n.output}
        for n in m.graph.node:
            if n.op_type in ("GroupNormalization", "InstanceNormalization", "Softmax"):
                assert all(producers.get(i) != "DequantizeLinear" for i in n.input[:1]), f"{what}: {n.name} quantized"
    assert info["calibration"]["samples"] == 2 and info["calibration"]["recipe"] == RECIPE


def test_calibration_is_deterministic(tiny, int8_graphs):
    cfg, vq, samples = tiny
    enc2, dec2, _ = vq_graphs(cfg.autoencoder, state_to_numpy(vq.state_dict()), "int8", samples=samples)
    enc, dec, _ = int8_graphs
    assert activation_scales(enc) == activation_scales(enc2) and activation_scales(dec) == activation_scales(dec2)
    assert enc.SerializeToString() == enc2.SerializeToString()
    assert dec.SerializeToString() == dec2.SerializeToString()


def test_int8_graphs_run_in_onnxruntime_close_to_the_float32_model(tmp_path, tiny, int8_graphs):
    from bimaco_deploy.backends.onnxruntime import OrtVQ
    from bimaco_deploy.export.artifacts import VQ_DECODER_FILE, VQ_ENCODER_FILE

    cfg, vq, samples = tiny
    enc, dec, _ = int8_graphs
    onnx.save(enc, str(tmp_path / VQ_ENCODER_FILE))
    onnx.save(dec, str(tmp_path / VQ_DECODER_FILE))
    ort_vq = OrtVQ(tmp_path, device="cpu", precision="int8")
    x = torch.from_numpy(samples[0])
    with torch.no_grad():
        z_ref = vq.encode(x)
        y_ref = vq.decode(z_ref)
    z = torch.as_tensor(ort_vq.encode(x))
    y = torch.as_tensor(ort_vq.decode(z_ref))  # the decoder alone, on the float latent
    lat_err = float((z - z_ref).abs().max() / z_ref.abs().max())
    a, b = y_ref.clamp(-1, 1) * 0.5 + 0.5, y.clamp(-1, 1) * 0.5 + 0.5
    psnr = 10 * np.log10(1.0 / float(((a - b) ** 2).mean()))
    assert lat_err < 0.2 and psnr > 25.0, (lat_err, psnr)
    assert not torch.equal(z, z_ref)  # it really ran in INT8


def test_the_shipped_calibration_set_is_varied_and_every_image_has_a_source_and_licence():
    images = calibration_images()
    assert len(images) >= 24
    assert len({img.shape for _, img in images}) >= 3  # sizes vary
    readme = (DEFAULT_CALIB_DIR.parent / "README.md").read_text()
    for path, _ in images:
        line = next((ln for ln in readme.splitlines() if path.name in ln), None)
        assert line is not None, f"{path.name} is not listed in calib/README.md"
        assert any(w in line.lower() for w in ("public domain", "cc0", "cc-by", "bsd", "licen", "cc by")), line
