"""The ``torch-ref`` backend: the PyTorch reference model (float maths on sign values).

This is the ground truth every other backend is compared with, and the float baseline
of the torch backends: the config's float twin (the same architecture without
binarization, e.g. ResShift/SinSR for BiMaCoSR) with seeded random weights, since
only its speed is ever used.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Tuple

from torch import nn

from .base import Backend, BackendSpec, UNetFn, register, torch_device


def reference_unet(spec: BackendSpec) -> nn.Module:
    """The reference UNet of a spec (checkpoint, or seeded random weights), on the CPU."""
    from ..models import load_unet

    return load_unet(spec.config, spec.ckpt, seed=spec.seed)


def float_twin_unet(spec: BackendSpec) -> Tuple[UNetFn, str]:
    """The torch float twin of the spec's config (seeded random weights), on its device."""
    from ..models import float_twin, load_unet

    cfg = replace(spec.config, unet=float_twin(spec.config.unet))
    device = torch_device(spec.device)
    return load_unet(cfg, None, seed=spec.seed or 0).to(device), "torch float32 reference (float twin)"


@register
class TorchRefBackend(Backend):
    """The PyTorch reference UNet."""

    name = "torch-ref"
    description = "the PyTorch reference (float maths on sign values); config (+ checkpoint)"

    def check_device(self) -> None:
        torch_device(self.spec.device)

    def unet(self) -> UNetFn:
        device = torch_device(self.spec.device)  # fails before the model is built
        return reference_unet(self.spec).to(device)

    def float_baseline(self) -> Tuple[UNetFn, str]:
        return float_twin_unet(self.spec)

    def vq_precisions(self) -> Tuple[str, ...]:
        # the reference computes in float: int8 is a deployment form (--backend torch / onnxruntime)
        return tuple(p for p in super().vq_precisions() if p != "int8")
