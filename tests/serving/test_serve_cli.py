"""`bimaco-deploy serve` as a user runs it: a separate process that starts the bundled
tritonserver on 127.0.0.1, answers health/ready and inference, and stops cleanly on SIGINT
and SIGTERM (exit 0, no server left listening)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import free_ports, need_triton

from bimaco_deploy.serving import names as N

REPO = Path(__file__).resolve().parents[2]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except Exception:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_answers_and_stops_cleanly_on_a_signal(tiny_dir, tmp_path, sig):
    need_triton()
    from bimaco_deploy.serving.client import RemoteSR

    http, grpc = free_ports(2)
    log = tmp_path / "serve.out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "bimaco_deploy.cli", "serve", "--config", str(tiny_dir / "config.yaml"),
           "--ckpt", str(tiny_dir / "bimacosr_tiny.pth"), "--vq-ckpt", str(tiny_dir / "vqgan.pth"),
           "--vq-precision", "fp32", "--backend", "torch", "--host", "127.0.0.1",
           "--http-port", str(http), "--grpc-port", str(grpc), "--tile", "64"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        ready = f"http://127.0.0.1:{http}/v2/health/ready"
        deadline = time.monotonic() + 300
        while _status(ready) != 200:
            assert proc.poll() is None, f"serve exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serve not ready after 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert _status(f"http://127.0.0.1:{http}/v2/health/live") == 200
        assert _status(f"http://127.0.0.1:{http}/v2/models/{N.TILED}/ready") == 200
        remote = RemoteSR(f"grpc://127.0.0.1:{grpc}")  # the gRPC endpoint too
        try:
            lr = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
            assert remote(lr, seed=1).shape == (48, 80, 3)
        finally:
            remote.close()
        proc.send_signal(sig)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text()
    assert "ready: HTTP" in text and "tritonserver stopped (exit code 0)" in text
    assert _status(ready) == 0  # nothing listens there any more
