"""Helpers of the serving tests: free loopback ports, the skip when Triton is missing, and
the limits the test repositories are written with."""

from __future__ import annotations

import socket
from typing import List

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
