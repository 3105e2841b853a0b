"""The TensorRT variant of `triton-repo` on a real Triton server with the TensorRT backend:
engines of the tiny fixture built here, the plugin loaded with the command line the
repository's README gives, one image through the tiler. Runs where NVIDIA's Triton
(``$TRITONSERVER_ROOT``, default /opt/tritonserver, as in the NGC container), TensorRT, the
built plugin and a GPU exist; skips with the reason elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import free_ports

pytestmark = [pytest.mark.tensorrt, pytest.mark.slow]

TRITON_ROOT = Path(os.environ.get("TRITONSERVER_ROOT", "/opt/tritonserver"))


def _need_trt_triton():
    pytest.importorskip("tensorrt", reason="TensorRT's Python bindings are not installed")
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed")
    if not (TRITON_ROOT / "bin" / "tritonserver").is_file() or not (TRITON_ROOT / "backends" / "tensorrt").is_dir():
        pytest.skip(f"no tritonserver with the TensorRT backend under {TRITON_ROOT} (set TRITONSERVER_ROOT)")
    from bimaco_deploy.backends.tensorrt.builder import find_plugin_library

    lib = find_plugin_library()
    if lib is None:
        pytest.skip("the bimaco TensorRT plugin library is not built (README: 'Build the TensorRT plugin')")
    return lib


def _build_engines(art: Path, engines: Path, tile: int, batch: int) -> None:
    import onnx

    from bimaco_deploy.backends.tensorrt.builder import (
        build_engine,
        build_from_onnx,
        profile_shapes,
        read_onnx_inputs,
    )
    from bimaco_deploy.export.artifacts import VQ_DECODER_FILE, VQ_ENCODER_FILE

    engines.mkdir()
    build_engine(art, engines / "unet.plan", min_hw=tile, opt_hw=tile, max_hw=tile, batch=f"1:{batch}",
                 float_baseline=False)
    for name, onnx_file, side in (("vq_encoder", VQ_ENCODER_FILE, 4 * tile), ("vq_decoder", VQ_DECODER_FILE, tile)):
        inputs = read_onnx_inputs(onnx.load(str(art / onnx_file), load_external_data=False))
        profile = profile_shapes(inputs, multiple=4, min_hw=(side, side), opt_hw=(side, side), max_hw=(side, side),
                                 batch=(1, batch, batch))
        build_from_onnx(art / onnx_file, engines / f"{name}.plan", profile, needs_plugin=False)


def test_tensorrt_repository_serves_an_image_on_triton_with_the_plugin(tiny_dir, tmp_path):
    plugin = _need_trt_triton()
    from bimaco_deploy.export.exporter import export
    from bimaco_deploy.serving.client import RemoteSR
    from bimaco_deploy.serving.repository import PLUGIN_FILE, write_repository
    from bimaco_deploy.serving.server import TritonDist, TritonServer

    art = tmp_path / "art"
    export(tiny_dir / "config.yaml", tiny_dir / "bimacosr_tiny.pth", art, vq_ckpt=tiny_dir / "vqgan.pth",
           progress=False, print_report=False)
    _build_engines(art, tmp_path / "engines", tile=64, batch=2)
    repo = write_repository(tmp_path / "repo", backend="tensorrt", artifacts=art, engines=tmp_path / "engines",
                            plugin_lib=plugin, tile=64, max_size=128, max_batch=2).path
    dist = TritonDist(TRITON_ROOT / "bin" / "tritonserver", TRITON_ROOT / "backends" / "python",
                      TRITON_ROOT / "backends" / "python" / "triton_python_backend_stub", TRITON_ROOT / "lib")
    http, grpc = free_ports(2)
    server = TritonServer(repo, http_port=http, grpc_port=grpc, dist=dist, backend_dir=TRITON_ROOT / "backends",
                          extra_args=[f"--backend-config=tensorrt,plugins={repo / PLUGIN_FILE}"])
    with server:
        remote = RemoteSR(server.http_url)
        try:
            lr = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)  # 4 tiles of 64
            sr = remote(lr, seed=3)
        finally:
            remote.close()
    assert sr.shape == (384, 320, 3) and sr.dtype == np.uint8
