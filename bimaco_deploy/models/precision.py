"""The autoencoder's precision: one option (``--vq-precision``), one meaning everywhere.

The VQ-f4 autoencoder is ~96% of the SR pipeline's time at fp32, so its precision decides
a user's speed-up. One word names it on every command (``export``, ``build``, ``infer``,
``check``, ``bench``):

========  =====================================================================
``fp32``  float32. Default on CPU.
``fp16``  float16: the whole model in half precision, as the original sampler does with
          ``use_fp16: true``. Default on GPU. On a CPU torch computes float16
          convolutions 10-30x slower than float32: allowed, with a warning.
``bf16``  bfloat16 convolutions and attention (torch autocast), GroupNorm and the codebook
          snapping in float32. Only where the CPU computes bfloat16 natively
          (AVX512_BF16, AMX, ARM BF16) or on a GPU that supports it; elsewhere an error
          (emulated bfloat16 is slower than float32).
``int8``  INT8 QDQ graphs calibrated on ``calib/`` (ONNX Runtime, :mod:`~bimaco_deploy.export.vq_quant`)
          or TensorRT INT8 engines; never a torch dtype.
========  =====================================================================

The config's ``use_fp16`` is the original's GPU setting; it no longer picks the default.
:class:`TorchVQ` runs a torch :class:`~.autoencoder.VQModel` at ``fp32``/``fp16``/``bf16``
behind the pipeline's autoencoder interface (float32 in and out).
"""

from __future__ import annotations

import contextlib
import copy
import platform
import warnings
from typing import ContextManager, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import BackendUnavailable, ConfigError
from .autoencoder import VQModel

#: Every precision the autoencoder can run at, in the order the CLI lists them.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: The ones torch computes (int8 runs as ONNX Runtime QDQ graphs or TensorRT engines).
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Bytes per weight of the deployed autoencoder at each precision (int8: 1 byte per
#: weight, the float-kept layers and biases counted at 4 by the exporter's file sizes).
WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


class SlowPrecisionWarning(UserWarning):
    """A precision that works on this device but is much slower than the default."""


def parse_precision(text: Optional[str], what: str = "--vq-precision") -> Optional[str]:
    """``text`` checked against :data:`PRECISIONS` (None stays None: the device default)."""
    if text is None:
        return None
    value = str(text).strip().lower()
    if value not in PRECISIONS:
        raise ConfigError(f"{what} must be one of {', '.join(PRECISIONS)}, got {text!r}")
    return value


def default_precision(device: Union[str, torch.device] = "cpu") -> str:
    """fp16 on a GPU, fp32 on a CPU ("auto": a GPU when torch sees one)."""
    if str(device) == "auto":
        return "fp16" if torch.cuda.is_available() else "fp32"
    return "fp16" if torch.device(device).type == "cuda" else "fp32"


def resolve_precision(precision: Optional[str], device: Union[str, torch.device] = "cpu") -> str:
    """The precision to use: ``precision`` checked, or the device default when None."""
    return parse_precision(precision) or default_precision(device)


def _cpu_flags() -> Tuple[str, set]:
    """(CPU model name, feature flags) from /proc/cpuinfo; empty where it does not exist."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and name in ("", platform.machine()):
                    name = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return name, flags


def cpu_bf16_native() -> Tuple[bool, str]:
    """Whether this CPU computes bfloat16 in hardware, and a line saying why (or why not).

    x86: AVX512_BF16 or AMX-BF16; ARM: the BF16 extension. Without one of them torch
    emulates bfloat16 in float32 arithmetic with conversions: slower than float32 itself.
    """
    name, flags = _cpu_flags()
    have = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if have:
        return True, f"{name}: {', '.join(have)}"
    return False, f"{name}: no AVX512_BF16, AMX-BF16 or ARM BF16 flag"


def check_torch_precision(precision: str, device: Union[str, torch.device] = "cpu") -> None:
    """Refuse a torch precision this device cannot run, warn for one that is slow here.

    Raises :class:`~bimaco_deploy.errors.BackendUnavailable` for bf16 on a CPU without
    native bfloat16 (or a GPU without bf16) and :class:`~bimaco_deploy.errors.ConfigError`
    for int8 (not a torch dtype); warns with :class:`SlowPrecisionWarning` for fp16 on a CPU
    and fp32 on a GPU.
    """
    dev = torch.device(device)
    if precision not in TORCH_PRECISIONS:
        raise ConfigError(
            f"--vq-precision {precision}: torch runs the autoencoder in {', '.join(TORCH_PRECISIONS)}; "
            "int8 runs as calibrated ONNX Runtime graphs (--backend torch or onnxruntime on a CPU) "
            "or TensorRT engines (--backend tensorrt)"
        )
    if precision == "bf16":
        if dev.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise BackendUnavailable("--vq-precision bf16: this GPU does not support bfloat16; use fp16 (the GPU default)")
            return
        native, why = cpu_bf16_native()
        if not native:
            raise BackendUnavailable(
                f"--vq-precision bf16 needs a CPU that computes bfloat16 natively (AVX512_BF16, AMX or ARM BF16); "
                f"{why}, where emulated bfloat16 is slower than float32. Use --vq-precision fp32 (the CPU default) "
                "or int8"
            )
    elif precision == "fp16" and dev.type == "cpu":
        warnings.warn(
            "--vq-precision fp16 on a CPU: torch computes float16 convolutions 10-30x slower than float32 "
            "(35-40 s per 64 px image with the tiny model instead of ~0.5 s); fp32 is the CPU default, "
            "bf16 or int8 are faster", SlowPrecisionWarning, stacklevel=2)
    elif precision == "fp32" and dev.type == "cuda":
        warnings.warn("--vq-precision fp32 on a GPU: fp16 (the GPU default) is usually twice as fast or more",
                      SlowPrecisionWarning, stacklevel=2)


class TorchVQ:
    """A torch VQ model run at one precision (``fp32``, ``fp16``, ``bf16``): the pipeline's
    autoencoder interface, float32 in and out.

    ``fp16`` casts the whole model (the original sampler's ``use_fp16`` path, codebook
    snapping included). ``bf16`` casts only the convolutions and runs under torch autocast,
    so convolutions and attention compute in bfloat16 while GroupNorm, softmax and the
    nearest-codebook search stay in float32 (a bfloat16 distance would pick other codes).
    """

    def __init__(self, model: VQModel, precision: str = "fp32", device: Union[str, torch.device] = "cpu"):
        check_torch_precision(precision, device)
        self.precision = precision
        self.device = torch.device(device)
        if precision != "fp32":
            # a cast copy: the caller's model (often also wrapped at fp32, as check does) stays float32
            model = copy.deepcopy(model)
        model = model.to(self.device).eval().requires_grad_(False)
        if precision == "fp16":
            model = model.half()
        else:
            model = model.float()
            if precision == "bf16":
                for m in model.modules():
                    if isinstance(m, nn.Conv2d):
                        m.to(torch.bfloat16)
        self.model = model
        self.downscale = model.downscale
        self.config = model.config

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype the model's first layers take (float16 for fp16, float32 otherwise)."""
        return torch.float16 if self.precision == "fp16" else torch.float32

    def _compute(self) -> ContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode(self, image: Tensor) -> Tensor:
        """Image [N, 3, H, W] -> continuous latent (float32)."""
        with self._compute():
            z = self.model.encode(image.to(self.device, self.input_dtype))
        return z.float()

    @torch.no_grad()
    def snap(self, latent: Tensor) -> Tuple[Tensor, Tensor]:
        """Nearest-codebook latent and indices, as :meth:`decode` computes them (outside autocast)."""
        zq, idx = self.model.quantize(latent.to(self.device, self.input_dtype))
        return zq, idx

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Latent -> image (float32); snaps to the codebook first, in the model's float dtype."""
        zq, _ = self.snap(latent)
        with self._compute():
            y = self.model.decoder(self.model.post_quant_conv(zq))
        return y.float()

    def __repr__(self) -> str:
        return f"TorchVQ({self.precision}, {self.device})"
