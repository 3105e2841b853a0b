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
    """The one-step SR pipeline with the UNet and autoencoder of backend ``spec.name``."""
    backend = make_backend(spec)
    return OneStepSR(backend.unet(), backend.autoencoder(vq_ckpt), spec.config, vq_dtype=vq_dtype,
                     pad_multiple=pad_multiple)


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
