"""`serve --backend onnxruntime`'s repository: the Python variant whose networks run the export's
graphs in ONNX Runtime, on the bundled tritonserver; its SR equals local
`infer --backend onnxruntime` on the same export bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from serving_helpers import free_ports, need_triton
from typer.testing import CliRunner

from bimaco_deploy.cli import app

pytestmark = pytest.mark.slow


def test_onnxruntime_runtime_serves_what_local_onnxruntime_infer_computes(tiny_dir, tmp_path):
    need_triton()
    from bimaco_deploy.export.exporter import export
    from bimaco_deploy.serving.repository import write_repository
    from bimaco_deploy.serving.server import TritonServer

    art = tmp_path / "art"
    export(tiny_dir / "config.yaml", tiny_dir / "bimacosr_tiny.pth", art, vq_ckpt=tiny_dir / "vqgan.pth",
           progress=False, print_report=False)
    repo = write_repository(tmp_path / "repo", backend="python", runtime="onnxruntime", artifacts=art,
                            max_batch=2, tile=64, max_size=128).path
    src = tmp_path / "lr.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src)
    local = CliRunner().invoke(app, ["infer", str(src), str(tmp_path / "local.png"), "--backend", "onnxruntime",
                                     "--artifacts", str(art), "--config", str(tiny_dir / "config.yaml"),
                                     "--tile", "64", "--seed", "8"])
    assert local.exit_code == 0, local.output
    http, grpc = free_ports(2)
    with TritonServer(repo, http_port=http, grpc_port=grpc) as server:
        served = CliRunner().invoke(app, ["infer", str(src), str(tmp_path / "served.png"), "--server",
                                          server.http_url, "--seed", "8"])
        assert served.exit_code == 0, served.output
    a = np.asarray(Image.open(tmp_path / "local.png"))
    b = np.asarray(Image.open(tmp_path / "served.png"))
    assert a.shape == b.shape == (160, 192, 3)
    assert np.array_equal(a, b), f"{np.count_nonzero(a != b)} values differ"
