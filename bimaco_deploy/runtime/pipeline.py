"""Moved to :mod:`bimaco_deploy.pipeline`; re-exported so existing imports keep working."""

from ..pipeline.factory import make_pipeline, reference_pipeline  # noqa: F401
from ..pipeline.onestep import STAGE_KEYS, OneStepSR, pad_bottom_right  # noqa: F401
