"""The ONNX Runtime backend: a UNet callable for the pipeline, VQ graphs, and clear input errors."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from bimaco_deploy.errors import ArtifactError, BackendUnavailable, InputError

from conftest import assert_backend_computes_the_reference
from conftest import need as _need


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from bimaco_deploy.export.exporter import export

    out = tmp_path_factory.mktemp("ort") / "tiny"
    export(_need("config.yaml"), _need("bimacosr_tiny.pth"), out, vq_ckpt=_need("vqgan.pth"), progress=False,
           print_report=False)
    return out


@pytest.fixture(scope="module")
def unet(artifacts):
    from bimaco_deploy.backends.onnxruntime import OrtUNet

    return OrtUNet(artifacts, device="cpu")


@pytest.fixture(scope="module")
def runner(artifacts):
    from bimaco_deploy.backends.onnxruntime import OrtParityRunner

    return OrtParityRunner(artifacts, device="cpu")


def test_unet_callable_reproduces_the_fixture(unet, runner, tiny_unet):
    """The original's case1 output, to 1e-5, or (where this CPU's summation order flips a
    near-zero activation) exactly what the reference computes with ONNX Runtime's sign choices."""
    io = np.load(_need("io.npz"))
    x, t, lq = (torch.from_numpy(io[f"case1_{k}"]) for k in ("x", "timesteps", "lq"))
    out = unet(x, t, lq)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == x.shape
    # numpy in, numpy out
    out_np = unet(io["case1_x"], io["case1_timesteps"], io["case1_lq"])
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_array_equal(out_np, out.numpy())
    ref = io["case1_out"]
    if np.abs(out.numpy() - ref).max() / np.abs(ref).max() >= 1e-5:
        assert_backend_computes_the_reference(runner, tiny_unet, x, t, lq, out)


def test_pipeline_accepts_the_backend(artifacts, unet, runner, tiny_unet):
    from bimaco_deploy.models import load_autoencoder, load_config
    from bimaco_deploy.pipeline.onestep import OneStepSR

    e2e = np.load(_need("e2e.npz"))
    cfg = load_config(_need("config.yaml"))
    vq = load_autoencoder(_need("vqgan.yaml"), _need("vqgan.pth"))
    pipe = OneStepSR(unet, vq, cfg, vq_dtype=torch.float32)
    stages = pipe.stages(torch.from_numpy(e2e["lr_01"]), noise=torch.from_numpy(e2e["noise"]))
    assert stages["sr"].shape == (1, 3, 160, 192)
    # the UNet stage fed its recorded input: the original's output, or the reference's with
    # ONNX Runtime's choices at near-zero activations (they depend on this CPU's summation order)
    x, t, lq = (torch.from_numpy(e2e[k]) for k in ("vqfp16_unet_in_x", "timesteps", "y0_padded"))
    got = unet(x, t, lq)
    ref = e2e["vqfp16_unet_out"]
    if np.abs(got.numpy() - ref).max() / np.abs(ref).max() >= 1e-5:
        assert_backend_computes_the_reference(runner, tiny_unet, x, t, lq, got)


@pytest.mark.parametrize("h,w", [(48, 64), (64, 40), (16, 32)])
def test_sizes_the_model_cannot_take(unet, h, w):
    x = np.zeros((1, 3, h, w), np.float32)
    with pytest.raises(InputError, match=r"multiples of 32"):
        unet(x, np.array([14]), x)


def test_other_bad_inputs(unet):
    x = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(InputError, match="lq has shape"):
        unet(x, np.array([14]), np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="timesteps has shape"):
        unet(x, np.array([14, 14]), x)
    with pytest.raises(InputError, match="channels"):
        unet(np.zeros((1, 4, 32, 32), np.float32), np.array([14]), x)
    with pytest.raises(InputError, match=r"\[N, C, H, W\]"):
        unet(np.zeros((3, 32, 32), np.float32), np.array([14]), x)


def test_custom_node_graph_is_refused(artifacts):
    from bimaco_deploy.backends.onnxruntime import OrtUNet

    with pytest.raises(ArtifactError, match="unet_portable.onnx"):
        OrtUNet(artifacts / "unet.onnx", device="cpu")
    with pytest.raises(ArtifactError, match="not found"):
        OrtUNet(artifacts / "missing", device="cpu")


def test_vq_backend(artifacts):
    from bimaco_deploy.backends.onnxruntime import OrtVQ

    io = np.load(_need("vqgan_io.npz"))
    vq = OrtVQ(artifacts, device="cpu")
    z = vq.encode(torch.from_numpy(io["image"]))
    assert isinstance(z, torch.Tensor) and z.shape == (1, 3, 16, 16)
    img = vq.decode(io["fp16_encode"])
    assert img.shape == (1, 3, 64, 64)
    # float16 on CPU: ONNX Runtime widens most fp16 ops to fp32 internally, torch rounds after each op,
    # so decodes differ by ~1e-2 (5 of 256 codebook near-ties flip: max 0.35); a figure, not parity
    assert np.median(np.abs(img - io["fp16_decode"])) < 3e-2
    assert np.abs(z.numpy() - io["fp16_encode"]).max() < 1e-2
    with pytest.raises(InputError, match="multiples of 4"):
        vq.encode(np.zeros((1, 3, 30, 32), np.float32))


def test_cuda_provider_is_reported_when_missing():
    import onnxruntime as ort

    from bimaco_deploy.backends.onnxruntime import providers_for

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers_for("cuda")[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
            providers_for("cuda")
        assert providers_for("auto") == ["CPUExecutionProvider"]
    with pytest.raises(InputError):
        providers_for("tpu")


@pytest.mark.cuda
def test_cuda_provider_runs_the_unet(artifacts):
    import onnxruntime as ort

    from bimaco_deploy.backends.onnxruntime import OrtUNet

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with a CUDA provider is not installed")
    io = np.load(_need("io.npz"))
    out = OrtUNet(artifacts, device="cuda")(io["case1_x"], io["case1_timesteps"], io["case1_lq"])
    assert np.isfinite(out).all() and out.shape == io["case1_out"].shape
