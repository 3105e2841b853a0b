"""Serving on NVIDIA Triton Inference Server.

* :mod:`.names`: the model and tensor names every part shares;
* :mod:`.repository`: ``bimaco-deploy triton-repo``, a model repository (TensorRT, ONNX Runtime
  or Python-backend networks; Python-backend pre/post-processing; the ensemble ``bimacosr``;
  the tiling BLS model ``bimacosr_tiled``), with :mod:`.pbtxt` writing the configs;
* :mod:`.stages` and :mod:`.triton_model`: the Python-backend models, on the pipeline's code;
* :mod:`.server`: the tritonserver that nvidia-pytriton bundles, started and stopped (``serve``);
* :mod:`.client`: ``infer --server URL`` through tritonclient.

Serving sits above the pipeline and backends and below the cli. Triton's own packages
(nvidia-pytriton, tritonclient: ``pip install 'bimaco-deploy[serve]'``) are imported only
where used.
"""

from __future__ import annotations

from .names import ENSEMBLE, TILED

__all__ = ["ENSEMBLE", "TILED"]
