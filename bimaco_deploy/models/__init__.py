"""Reference models (float maths, the ground truth) and their loading.

Public entry points: :func:`load_config`, :func:`load_unet`, :func:`load_autoencoder`,
:func:`iter_binary_layers`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError
from .binary_layers import BinaryConv2d, BinaryLinear
from .checkpoint import check_checkpoint_file, load_state_dict_strict, read_state_dict
from .config import ModelConfig, float_twin, load_config, load_vq_config
from .unet import SwinUNet, build_unet, iter_binary_layers

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "ModelConfig",
    "SwinUNet",
    "build_unet",
    "float_twin",
    "iter_binary_layers",
    "load_autoencoder",
    "load_config",
    "load_unet",
    "load_vq_config",
    "random_init_",
    "unet_dead_keys",
]


def unet_dead_keys(model: SwinUNet) -> List[str]:
    """Checkpoint keys of this model that the original stores but never reads, besides the
    pattern-matched ones: the SMB and LRMB tensors of the average-pool (strided) layers."""
    keys: List[str] = []
    for name, m in iter_binary_layers(model):
        if isinstance(m, BinaryConv2d) and m.uses_avgpool_shortcut:
            keys += [f"{name}.skip_connection.values", f"{name}.skip_connection.indices_float"]
            keys += [f"{name}.lora.A.weight", f"{name}.lora.B.weight"]
    return keys


def _check_smb_indices(model: SwinUNet, source: PathLike) -> None:
    for name, m in iter_binary_layers(model):
        if not getattr(m, "has_smb", False):
            continue
        idx = m.skip_connection.indices()
        n_out, n_in = m.skip_connection.out_features, m.skip_connection.in_features
        if idx.numel() and (idx.min() < 0 or idx[0].max() >= n_out or idx[1].max() >= n_in):
            raise CheckpointError(
                f"{source}: {name}.skip_connection.indices_float has coordinates outside the "
                f"{n_out} x {n_in} sparse matrix (after rounding: rows {int(idx[0].min())}..{int(idx[0].max())}, "
                f"cols {int(idx[1].min())}..{int(idx[1].max())})"
            )


@torch.no_grad()
def random_init_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded noise on every parameter so that no weight is exactly zero (as in the fixtures).

    The float init leaves the zero-initialised convolutions (``out_layers.3``, ``out.2``)
    at exactly zero, which would make alpha = 0 and the binary layers trivially exact.
    """
    g = torch.Generator().manual_seed(seed + 1)
    for _, p in model.named_parameters():
        std = float(p.std()) if p.numel() > 1 else 0.0
        scale = 0.1 * std if std > 0 else 0.02
        p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def load_unet(
    config_path: Union[PathLike, ModelConfig],
    ckpt_path: Optional[PathLike] = None,
    *,
    seed: Optional[int] = None,
) -> SwinUNet:
    """Build the UNet of a config and load a checkpoint into it (strictly).

    With no checkpoint the model gets seeded random weights (default init + noise;
    seed 0 unless given). The model is returned in eval mode, float32, without grads.
    """
    cfg = config_path if isinstance(config_path, ModelConfig) else load_config(config_path)
    if ckpt_path is not None:
        check_checkpoint_file(ckpt_path)  # a bad file is named before the model is built (SVD init takes seconds)
    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0 if seed is None else seed)
        # with a checkpoint every tensor is overwritten by the strict load: skip the SVD init, which
        # costs seconds (torch's threaded SVD on small matrices is slow on busy machines)
        model = build_unet(cfg.unet, init=ckpt_path is None)
        if ckpt_path is None:
            random_init_(model, 0 if seed is None else seed)
    finally:
        torch.random.set_rng_state(torch_state)
    if ckpt_path is not None:
        state = read_state_dict(ckpt_path)
        load_state_dict_strict(model, state, source=ckpt_path, dead_keys=unet_dead_keys(model), what="UNet")
        _check_smb_indices(model, ckpt_path)
    model.eval().requires_grad_(False)
    return model


def load_autoencoder(config_path: PathLike, ckpt_path: Optional[PathLike] = None, *, seed: Optional[int] = None):
    """The VQ-f4 autoencoder of a config (see :mod:`bimaco_deploy.models.autoencoder`)."""
    from .autoencoder import load_autoencoder as _load

    return _load(config_path, ckpt_path, seed=seed)
