"""Helpers of the serving tests: free loopback ports, the skip when Triton is missing, and
the limits the test repositories are written with."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator, List

import pytest


def free_ports(n: int) -> List[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (bound to port 0, then released)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def need_triton() -> None:
    """Skip with the reason unless the bundled server and the client are installed."""
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'bimaco-deploy[serve]')")
    from bimaco_deploy.errors import BackendUnavailable
    from bimaco_deploy.serving.server import bundled_tritonserver, python_library_dir

    try:
        bundled_tritonserver()
        python_library_dir()
    except BackendUnavailable as err:
        pytest.skip(str(err))


#: The served tiny model: float32 autoencoder (the config's float16 is 10-30x slower on CPU),
#: 64 px tiles so that a 96 x 80 image takes the tiler's path, images up to 128 px.
TILE = 64
MAX_SIZE = 128


# Fixtures shared by the server tests (imported by the test modules: a second conftest.py would
# shadow tests/conftest.py's helpers, which tests import as `conftest`).


@pytest.fixture(scope="module")
def python_repo(tmp_path_factory, tiny_dir: Path) -> Path:
    """`bimaco-deploy triton-repo --backend python` of the tiny fixture (through the CLI)."""
    from typer.testing import CliRunner

    from bimaco_deploy.cli import app

    out = tmp_path_factory.mktemp("triton") / "repo"
    args = ["triton-repo", "--backend", "python", "--config", str(tiny_dir / "config.yaml"), "--ckpt",
            str(tiny_dir / "bimacosr_tiny.pth"), "--vq-ckpt", str(tiny_dir / "vqgan.pth"), "--vq-precision", "fp32",
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
