"""Moved: the engine runner to :mod:`bimaco_deploy.backends.tensorrt.runner`, the single-engine
benchmark to :mod:`bimaco_deploy.bench.engine`; re-exported so existing imports and
``python -m bimaco_deploy.runtime.trt_backend ENGINE [HxW] [BATCH]`` keep working."""

from ..backends.tensorrt.runner import TrtUNet  # noqa: F401
from ..bench.engine import bench_engine, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
