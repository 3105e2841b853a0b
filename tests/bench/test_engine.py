"""bench_engine: one TensorRT engine on its own."""

from __future__ import annotations

import pytest

from bimaco_deploy.bench.engine import bench_engine
from bimaco_deploy.errors import InputError


def test_bench_rejects_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="iters"):
        bench_engine(tmp_path / "unet.plan", iters=0)
