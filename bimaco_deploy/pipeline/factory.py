"""Pipelines assembled from a backend: the one place that plugs a backend's UNet and
autoencoder into :class:`~.onestep.OneStepSR`, at one ``--vq-precision``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ..backends import Backend, BackendSpec, make_backend
from ..errors import ConfigError
from ..models.config import ModelConfig
from ..models.precision import TORCH_DTYPES, resolve_precision
from .onestep import OneStepSR

PathLike = Union[str, Path]


def make_autoencoder(spec: BackendSpec, vq_ckpt: Optional[PathLike] = None, precision: Optional[str] = None, *,
                     calib: Optional[PathLike] = None, say: Optional[Callable[[str], None]] = None,
                     backend: Optional[Backend] = None):
    """The autoencoder of backend ``spec.name`` at ``precision`` (None: the device default).

    Where the backend runs ONNX graphs it lacks (int8 on the torch backends, any precision on
    onnxruntime without exported VQ graphs), they are made from ``vq_ckpt`` (or the seeded
    random weights), calibrated on ``calib`` (default ``calib/calibration``) and cached:
    :func:`~.calibration.ensure_vq_graphs`, which says what it does through ``say``.
    """
    from .calibration import ensure_vq_graphs

    precision = resolve_precision(precision, spec.device)

    def graphs(p: str) -> Path:
        return ensure_vq_graphs(spec.config, vq_ckpt, p, seed=spec.seed, calib=calib, say=say)

    return (backend or make_backend(spec)).autoencoder(vq_ckpt, precision, graphs=graphs)


def make_pipeline(
    spec: BackendSpec,
    vq_ckpt: Optional[PathLike] = None,
    *,
    vq_precision: Optional[str] = None,
    calib: Optional[PathLike] = None,
    say: Optional[Callable[[str], None]] = None,
    vq_dtype: Optional[torch.dtype] = None,
    pad_multiple: int = 64,
) -> OneStepSR:
    """The one-step SR pipeline with the UNet and autoencoder of backend ``spec.name``.

    ``vq_precision``: fp32 | fp16 | bf16 | int8 (None: fp32 on CPU, fp16 on GPU); see
    :mod:`~bimaco_deploy.models.precision`. ``vq_dtype`` is the older spelling (a torch dtype).
    The pipeline's ``run_info`` says what runs: the backend, the UNet's weights, which
    autoencoder (ONNX graphs or torch, its precision and weights), and whether either uses
    random weights (outputs are then noise).
    """
    if vq_dtype is not None:
        by_dtype = {v: k for k, v in TORCH_DTYPES.items()}
        if vq_precision is not None or vq_dtype not in by_dtype:
            raise ConfigError(f"give one of vq_precision / vq_dtype (a torch float dtype), got {vq_precision!r}, {vq_dtype}")
        vq_precision = by_dtype[vq_dtype]
    backend = make_backend(spec)
    unet = backend.unet()
    vq = make_autoencoder(spec, vq_ckpt, vq_precision, calib=calib, say=say, backend=backend)
    pipe = OneStepSR(unet, vq, spec.config, pad_multiple=pad_multiple)
    vq_meta = getattr(vq, "metadata", None)
    vq_random = vq_meta.get("weights") == "random_init" if isinstance(vq_meta, dict) else vq_ckpt is None
    pipe.run_info = {
        "backend": spec.name,
        "config": str(spec.config.source),
        "unet": backend.describe_unet(),
        "unet_random_weights": backend.random_weights(),
        "autoencoder": backend.describe_autoencoder(vq, vq_ckpt),
        "autoencoder_precision": pipe.vq_precision,
        "autoencoder_random_weights": bool(vq_random),
    }
    return pipe


def reference_pipeline(
    config: Union[PathLike, ModelConfig],
    unet_ckpt: Optional[PathLike] = None,
    vq_ckpt: Optional[PathLike] = None,
    *,
    seed: Optional[int] = None,
    vq_precision: Optional[str] = None,
    vq_dtype: Optional[torch.dtype] = None,
    pad_multiple: int = 64,
) -> OneStepSR:
    """The pipeline on the PyTorch reference models (the ground truth other backends are checked against).

    ``config``: a config path, built-in name or :class:`ModelConfig`; checkpoints as for
    :func:`~bimaco_deploy.models.load_unet` / :func:`~bimaco_deploy.models.autoencoder.load_autoencoder`
    (None: seeded random weights).
    """
    from ..backends import resolve_config

    cfg = resolve_config(config)
    if cfg.autoencoder is None:
        raise ConfigError(f"{cfg.source}: missing section 'autoencoder'")
    spec = BackendSpec("torch-ref", cfg, ckpt=unet_ckpt, seed=seed)
    return make_pipeline(spec, vq_ckpt, vq_precision=vq_precision, vq_dtype=vq_dtype, pad_multiple=pad_multiple)
