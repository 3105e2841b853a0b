"""The one-step super-resolution pipeline of BiMaCoSR (spec section a, steps 1-12).

LR image in [0, 1] -> [-1, 1] -> reflect-pad to multiples of 64 -> bicubic x sf ->
VQ encode (continuous latent z_y) -> x_T = z_y + k * eps -> UNet(x_T / s_in, t, lq) ->
VQ decode (quantizing) -> crop -> clamp(-1, 1) -> * 0.5 + 0.5.

The UNet is any callable ``unet(x, timesteps, lq) -> x0`` taking and returning torch
tensors: the PyTorch reference module, or an ONNX Runtime / packed-kernel / TensorRT
backend wrapped to the same signature. All constants come from the config
(``diffusion.one_step()``, ``diffusion.sf``, ``diffusion.scale_factor``); nothing is
hard-coded here except the sampler's padding multiple (64), which is a constructor argument.
The autoencoder's precision is decided where it is made (``--vq-precision``, see
:mod:`~bimaco_deploy.models.precision`); a bare torch model runs at the device default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends.base import UNetFn, VQLike
from ..errors import ConfigError, InputError
from ..models.autoencoder import VQModel
from ..models.config import ModelConfig
from ..models.precision import TORCH_DTYPES, TorchVQ, default_precision

PathLike = Union[str, Path]

#: Keys of :meth:`OneStepSR.stages`, named like the fixture ``e2e.npz`` entries.
STAGE_KEYS = (
    "y0_padded",
    "lr_upsampled",
    "noise",
    "timesteps",
    "z_y",
    "x_T",
    "unet_in_x",
    "unet_out",
    "decoded_crop",
    "sr",
)


def pad_bottom_right(y: Tensor, multiple: int) -> Tensor:
    """Pad the last two axes at the bottom/right up to multiples of ``multiple`` by reflection.

    Identical to the original sampler (one ``F.pad(mode='reflect')``) whenever that works,
    i.e. whenever each pad is smaller than its side. The original raises for a side in
    1..32 that is not a multiple of 64; here such a side is padded in several reflect
    steps, each smaller than the current size (size s -> at most 2s - 1 per step), so any
    side works. A side of exactly 1 pixel cannot be reflected at all: it is replicated
    (every padded row/column equals that pixel). These deviations only ever touch inputs
    the original rejects; padded pixels are cropped away after decoding, they only shape
    the context the model sees.
    """
    h, w = y.shape[-2:]
    pad_h = (-h) % multiple
    pad_w = (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return y
    if pad_h < h and pad_w < w:
        # the original's exact call (reflect padding is a pure copy: bit-exact either way)
        return F.pad(y, pad=(0, pad_w, 0, pad_h), mode="reflect")
    y = _pad_axis(y, pad_w, axis=-1)
    return _pad_axis(y, pad_h, axis=-2)


def prepare_lr(lr01: Tensor, multiple: int) -> Tensor:
    """Steps 1-2: LR in [0, 1] -> [-1, 1], reflect-padded bottom/right to multiples of ``multiple``."""
    return pad_bottom_right((lr01.to(torch.float32) - 0.5) / 0.5, multiple)


def upsample_bicubic(y0_padded: Tensor, sf: int) -> Tensor:
    """Step 4a: bicubic x sf (align_corners False, no antialias, no clamp): the encoder's input."""
    return F.interpolate(y0_padded, scale_factor=sf, mode="bicubic")


def _pad_axis(y: Tensor, amount: int, axis: int) -> Tensor:
    while amount > 0:
        size = y.shape[axis]
        if size == 1:
            step, mode = amount, "replicate"
        else:
            step, mode = min(amount, size - 1), "reflect"
        pads = (0, step, 0, 0) if axis == -1 else (0, 0, 0, step)
        y = F.pad(y, pad=pads, mode=mode)
        amount -= step
    return y


class OneStepSR:
    """One-step BiMaCoSR super-resolution: ``sr = pipe(lr)`` for LR in [0, 1], [N, 3, H, W].

    Args:
        unet: ``unet(x, timesteps, lq) -> pred_x0``; float32 tensors, ``timesteps`` int64 [N].
        vq: the VQ-f4 autoencoder: anything with ``encode``/``decode``/``downscale`` taking and
            returning float32 (a :class:`~bimaco_deploy.models.precision.TorchVQ`, the ONNX Runtime
            or TensorRT autoencoder of a backend). A bare torch :class:`VQModel` is wrapped in a
            ``TorchVQ`` (a cast copy for fp16/bf16) at ``vq_dtype``, or at the default precision of its device
            (fp32 on CPU, fp16 on GPU; the config's ``use_fp16`` no longer decides it).
        config: the model config (needs the ``diffusion`` section).
        pad_multiple: LR sides are reflect-padded to multiples of this. 64 is the original
            sampler's ``desired_min_size``, fixed there independently of the UNet; it must be
            a multiple of the UNet's own size constraint (32 for the tiny fixture, 64 published).
        vq_dtype: the dtype of a bare torch autoencoder (float32 / float16 / bfloat16), e.g. for
            parity variants; CPU float16 convolutions are 10-30x slower than float32 (warned).
        device: where tensors live; defaults to the autoencoder's device (CPU for ONNX Runtime).
    """

    def __init__(
        self,
        unet: UNetFn,
        vq: Union[VQModel, VQLike],
        config: ModelConfig,
        *,
        pad_multiple: int = 64,
        vq_dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
    ):
        if config.diffusion is None:
            raise ConfigError(f"{config.source}: missing section 'diffusion' (needed for the one-step constants)")
        if pad_multiple < 1 or pad_multiple % vq.downscale:
            raise ConfigError(f"pad_multiple {pad_multiple} must be a positive multiple of the VQ downscale {vq.downscale}")
        diffusion = config.diffusion
        if diffusion.predict_type != "xstart":
            raise ConfigError(f"{config.source}: diffusion.predict_type {diffusion.predict_type!r}; only 'xstart' is supported")
        if config.unet is not None and config.unet.size_multiple and pad_multiple % config.unet.size_multiple:
            raise ConfigError(
                f"pad_multiple {pad_multiple} is not a multiple of the UNet size constraint {config.unet.size_multiple}"
            )
        self.unet = unet
        self.config = config
        self.constants = diffusion.one_step()
        self.sf = diffusion.sf
        self.scale_factor = diffusion.scale_factor
        self.pad_multiple = pad_multiple
        if isinstance(vq, nn.Module):
            vq_device = next(vq.parameters()).device
            by_dtype = {v: k for k, v in TORCH_DTYPES.items()}
            if vq_dtype is not None and vq_dtype not in by_dtype:
                raise ConfigError(f"vq_dtype must be one of {', '.join(map(str, by_dtype))}, got {vq_dtype}")
            precision = by_dtype[vq_dtype] if vq_dtype is not None else default_precision(vq_device)
            vq = TorchVQ(vq, precision, vq_device)
        elif vq_dtype not in (None, torch.float32):
            raise ConfigError(f"vq_dtype {vq_dtype} applies to a torch autoencoder only; {type(vq).__name__} takes float32")
        self.vq = vq
        #: the autoencoder's precision (fp32, fp16, bf16, int8), as its maker recorded it
        self.vq_precision = getattr(vq, "precision", "fp32")
        self.device = torch.device(device) if device is not None else torch.device(getattr(vq, "device", "cpu"))

    @property
    def vq_dtype(self) -> torch.dtype:
        """The torch dtype of the autoencoder's computation (float32 for non-torch autoencoders)."""
        return TORCH_DTYPES.get(self.vq_precision, torch.float32) if isinstance(self.vq, TorchVQ) else torch.float32

    # -- the stages, each usable on its own for stage-by-stage parity checks --

    def prepare(self, lr01: Tensor) -> Tensor:
        """Steps 1-2: [0, 1] -> [-1, 1], reflect-padded bottom/right (this is also the UNet's lq)."""
        if lr01.dim() != 4 or lr01.shape[1] != 3 or lr01.shape[2] < 1 or lr01.shape[3] < 1:
            raise InputError(f"expected an LR image tensor [N, 3, H, W], got shape {tuple(lr01.shape)}")
        return prepare_lr(lr01.to(device=self.device), self.pad_multiple)

    def upsample(self, y0_padded: Tensor) -> Tensor:
        """Step 4a: bicubic x sf (align_corners False, no antialias, no clamp)."""
        return upsample_bicubic(y0_padded, self.sf)

    @torch.no_grad()
    def encode(self, lr_upsampled: Tensor) -> Tensor:
        """Step 4b: VQ encode (no quantization) at the autoencoder's precision, times scale_factor (float32)."""
        return self.scale_latent(self.vq_encode(lr_upsampled))

    @torch.no_grad()
    def vq_encode(self, lr_upsampled: Tensor) -> Tensor:
        """The autoencoder's part of step 4b: its raw latent (it computes at its own precision)."""
        return self.vq.encode(lr_upsampled)

    def scale_latent(self, z: Tensor) -> Tensor:
        """The rest of step 4b: times scale_factor in the latent's own dtype, then float32."""
        return torch.as_tensor(z * self.scale_factor).to(device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def decode(self, pred_x0: Tensor) -> Tensor:
        """Step 9: VQ decode (quantizing first) of pred_x0 / scale_factor at the autoencoder's precision (float32)."""
        return self.vq_decode(self.unscale_latent(pred_x0))

    def unscale_latent(self, pred_x0: Tensor) -> Tensor:
        """The first part of step 9: pred_x0 / scale_factor (float32)."""
        return (1.0 / self.scale_factor) * pred_x0

    @torch.no_grad()
    def vq_decode(self, z: Tensor) -> Tensor:
        """The autoencoder's part of step 9: decode (quantizing first) at its own precision, to float32."""
        return torch.as_tensor(self.vq.decode(z)).to(device=self.device, dtype=torch.float32)

    def crop(self, decoded: Tensor, height: int, width: int) -> Tensor:
        """Step 10: the decoded image cropped to sf x the LR size before padding."""
        return decoded[:, :, : height * self.sf, : width * self.sf]

    def prior(self, z_y: Tensor, noise: Tensor) -> Tensor:
        """Step 6: x_T = z_y + k * eps."""
        return z_y + self.constants.prior_scale * noise

    def scale_input(self, x_t: Tensor) -> Tensor:
        """Step 7a: the UNet sees x_T / s_in (lq is not normalised)."""
        return x_t / self.constants.input_scale

    def timesteps(self, batch: int) -> Tensor:
        """The model timestep of the one-step path, one int64 per batch element."""
        return torch.full((batch,), self.constants.timestep, dtype=torch.int64, device=self.device)

    def make_noise(self, like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Standard normal noise shaped like the latent (float32), from ``generator`` if given."""
        gen_device = generator.device if generator is not None else self.device
        eps = torch.randn(like.shape, generator=generator, dtype=torch.float32, device=gen_device)
        return eps.to(self.device)

    # -- whole pipeline --

    @torch.no_grad()
    def stages(
        self, lr01: Tensor, *, noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
    ) -> Dict[str, Tensor]:
        """Run steps 1-12 and return every intermediate (keys :data:`STAGE_KEYS`).

        ``decoded_crop`` is unclamped (as in ``e2e.npz``); ``sr`` = clamp(decoded_crop, -1, 1)
        * 0.5 + 0.5, in [0, 1]. ``noise``: the prior noise eps, shaped like z_y (= the padded
        LR size); otherwise drawn from ``generator`` (or the global RNG when None).
        """
        h, w = lr01.shape[-2:]
        y0 = self.prepare(lr01)
        up = self.upsample(y0)
        z_y = self.encode(up)
        if noise is None:
            noise = self.make_noise(z_y, generator)
        elif tuple(noise.shape) != tuple(z_y.shape):
            raise InputError(f"noise has shape {tuple(noise.shape)}, the latent z_y has {tuple(z_y.shape)}")
        noise = noise.to(device=self.device, dtype=torch.float32)
        x_t = self.prior(z_y, noise)
        x_in = self.scale_input(x_t)
        t = self.timesteps(x_in.shape[0])
        out = self.unet(x_in, t, y0)
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(x_in.shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InputError(f"the UNet returned {got}; expected a tensor of shape {tuple(x_in.shape)}")
        out = out.to(device=self.device, dtype=torch.float32)
        decoded = self.crop(self.decode(out), h, w)
        sr = decoded.clamp(-1.0, 1.0) * 0.5 + 0.5
        return {
            "y0_padded": y0,
            "lr_upsampled": up,
            "noise": noise,
            "timesteps": t,
            "z_y": z_y,
            "x_T": x_t,
            "unet_in_x": x_in,
            "unet_out": out,
            "decoded_crop": decoded,
            "sr": sr,
        }

    def sample_signed(
        self, lr01: Tensor, *, noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Steps 1-11: the SR image in [-1, 1] (clamped), what the tiler averages."""
        return self.stages(lr01, noise=noise, generator=generator)["decoded_crop"].clamp(-1.0, 1.0)

    def __call__(
        self, lr01: Tensor, *, noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """LR [N, 3, H, W] in [0, 1] -> SR [N, 3, sf*H, sf*W] in [0, 1] (no tiling)."""
        return self.stages(lr01, noise=noise, generator=generator)["sr"]
