"""Moved to :mod:`bimaco_deploy.bench.unet`; re-exported so existing imports keep working."""

from ..bench.unet import bench_markdown, bench_unet  # noqa: F401
