"""The one-step SR pipeline: LR image -> VQ encoder -> UNet -> VQ decoder -> SR image.

* :mod:`.onestep`: :class:`OneStepSR`, the pipeline's stages around any UNet callable;
* :mod:`.factory`: pipelines assembled from a backend, and the reference pipeline;
* :mod:`.tiling`: large images in overlapping tiles, reproducible per-tile noise;
* :mod:`.images`: image files in and out (8-bit, atomic PNG writes);
* :mod:`.infer`: ``bimaco-deploy infer`` over files and folders.

The pipeline may import backends, models and errors; nothing above it (check, bench, cli).
"""

from __future__ import annotations

from .factory import make_pipeline, reference_pipeline
from .onestep import STAGE_KEYS, OneStepSR, pad_bottom_right
from .tiling import plan_tiles, super_resolve, tile_generator

__all__ = ["OneStepSR", "STAGE_KEYS", "pad_bottom_right", "make_pipeline", "reference_pipeline", "plan_tiles",
           "super_resolve", "tile_generator"]
