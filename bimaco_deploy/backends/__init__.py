"""Backends: one module each, behind one interface (:mod:`.base`).

| name        | module            | the UNet runs on                                     |
|-------------|-------------------|------------------------------------------------------|
| torch-ref   | :mod:`.torch_ref`   | the PyTorch reference (float maths on sign values) |
| torch       | :mod:`.packed_torch`| packed 1-bit weights on the bimaco torch ops       |
| onnxruntime | :mod:`.onnxruntime` | ``unet_portable.onnx`` of an export                |
| tensorrt    | :mod:`.tensorrt`    | a TensorRT engine with the bimaco plugin           |

Backends may import ``models``, ``export`` (artifact names), ``plugins`` and ``errors``;
nothing above them (pipeline, check, bench, cli).
"""

from __future__ import annotations

from typing import Optional, Tuple

from .base import (
    Backend,
    BackendSpec,
    ParityRunner,
    PathLike,
    UNetFn,
    VQGraphs,
    VQLike,
    backend_names,
    get_backend,
    make_backend,
    register,
    resolve_config,
    torch_device,
)

__all__ = [
    "Backend", "BackendSpec", "ParityRunner", "UNetFn", "VQGraphs", "VQLike", "backend_names", "get_backend", "make_backend",
    "register", "resolve_config", "torch_device", "make_unet", "make_float_baseline", "make_vq",
]


def make_unet(spec: BackendSpec) -> UNetFn:
    """The UNet callable of the backend ``spec.name``."""
    return make_backend(spec).unet()


def make_float_baseline(spec: BackendSpec) -> Tuple[UNetFn, str]:
    """The float model of the same family on the backend ``spec.name``, and a line saying what it is."""
    return make_backend(spec).float_baseline()


def make_vq(spec: BackendSpec, vq_ckpt: Optional[PathLike] = None, precision: Optional[str] = None, *,
            graphs: Optional[VQGraphs] = None) -> VQLike:
    """The autoencoder the backend ``spec.name`` runs the pipeline with, at ``precision``."""
    return make_backend(spec).autoencoder(vq_ckpt, precision, graphs=graphs)
