"""Moved to :mod:`bimaco_deploy.bench.tegrastats`; re-exported so existing imports keep working."""

from ..bench.tegrastats import TegrastatsSampler, rail_power_w  # noqa: F401
