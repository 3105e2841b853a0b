"""Serving fixtures: a real tritonserver (the one nvidia-pytriton bundles) on a Python-variant
repository of the tiny fixture, started once per module and stopped by the fixture itself."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from serving_helpers import MAX_SIZE, TILE, free_ports, need_triton


@pytest.fixture(scope="module")
def python_repo(tmp_path_factory, tiny_dir: Path) -> Path:
    """`bimaco-deploy triton-repo --backend python` of the tiny fixture (through the CLI)."""
    from typer.testing import CliRunner

    from bimaco_deploy.cli import app

    out = tmp_path_factory.mktemp("triton") / "repo"
    args = ["triton-repo", "--backend", "python", "--config", str(tiny_dir / "config.yaml"), "--ckpt",
            str(tiny_dir / "bimacosr_tiny.pth"), "--vq-ckpt", str(tiny_dir / "vqgan.pth"), "--vq-dtype", "float32",
            "--out", str(out), "--tile", str(TILE), "--max-size", str(MAX_SIZE), "--max-batch", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def triton_server(python_repo: Path) -> Iterator[object]:
    """The bundled tritonserver on ``python_repo``, on free loopback ports; stopped at the end."""
    need_triton()
    from bimaco_deploy.serving.server import TritonServer

    http, grpc = free_ports(2)
    server = TritonServer(python_repo, http_port=http, grpc_port=grpc, host="127.0.0.1")
    server.start(ready_timeout_s=300)
    try:
        yield server
    finally:
        code = server.stop()
        server.close()
        assert code == 0, f"tritonserver did not stop cleanly (exit code {code})"
