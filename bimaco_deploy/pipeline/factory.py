"""Pipelines assembled from a backend: the one place that plugs a backend's UNet and
autoencoder into :class:`~.onestep.OneStepSR`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from ..backends import BackendSpec, make_backend
from ..errors import ConfigError
from ..models.config import ModelConfig
from .onestep import OneStepSR

PathLike = Union[str, Path]


def make_pipeline(
    spec: BackendSpec,
    vq_ckpt: Optional[PathLike] = None,
    *,
    vq_dtype: Optional[torch.dtype] = None,
    pad_multiple: int = 64,
) -> OneStepSR:
    """The one-step SR pipeline with the UNet and autoencoder of backend ``spec.name``.

    The pipeline's ``run_info`` says what runs: the backend, the UNet's weights, which
    autoencoder (ONNX graphs or torch, and its weights), and whether either uses random
    weights (outputs are then noise).
    """
    backend = make_backend(spec)
    unet = backend.unet()
    vq = backend.autoencoder(vq_ckpt)
    pipe = OneStepSR(unet, vq, spec.config, vq_dtype=vq_dtype, pad_multiple=pad_multiple)
    vq_meta = getattr(vq, "metadata", None)
    vq_random = vq_meta.get("weights") == "random_init" if isinstance(vq_meta, dict) else vq_ckpt is None
    pipe.run_info = {
        "backend": spec.name,
        "config": str(spec.config.source),
        "unet": backend.describe_unet(),
        "unet_random_weights": backend.random_weights(),
        "autoencoder": backend.describe_autoencoder(vq, vq_ckpt),
        "autoencoder_random_weights": bool(vq_random),
    }
    return pipe


def reference_pipeline(
    config: Union[PathLike, ModelConfig],
    unet_ckpt: Optional[PathLike] = None,
    vq_ckpt: Optional[PathLike] = None,
    *,
    seed: Optional[int] = None,
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
    return make_pipeline(spec, vq_ckpt, vq_dtype=vq_dtype, pad_multiple=pad_multiple)
