"""The Python-backend models of a Triton repository: the SR pipeline's own code, one stage each.

Each stage runs inside Triton's Python-backend stub (``triton_python_backend_utils`` is passed
in as ``pb``; this module does not import it, so the package imports without Triton). The
maths is :class:`~bimaco_deploy.pipeline.onestep.OneStepSR`'s and
:mod:`~bimaco_deploy.pipeline.tiling`'s, called stage by stage, so a served image equals the
local pipeline's: padding, bicubic upsampling, per-tile noise streams, the latent scalings,
crop, clamp and uint8 rounding are never re-derived here.

Requests are processed one by one, each as it came (a request may carry a batch of
same-sized images): a dynamic batch of requests is one ``execute`` call, but the
arithmetic of each request is exactly the unbatched pipeline's. A request that cannot be
processed gets an error response naming the model, the tensor and what was expected; the
stage goes on serving the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.utils.dlpack

from ..backends import BackendSpec, make_backend, resolve_config
from ..errors import BimacoError, ConfigError, InputError, ServerError
from ..pipeline.images import tensor_to_uint8, uint8_to_tensor
from ..pipeline.onestep import OneStepSR
from ..pipeline.tiling import TileCanvas, plan_tiles, tile_generator
from . import names as N

#: the repository parameter vq_dtype -> the autoencoder precision word (bimaco_deploy.models.precision)
_PRECISION_OF_DTYPE = {"float16": "fp16", "float32": "fp32"}


class _Geometry:
    """The autoencoder as far as the stages around it need it: its downscale factor."""

    def __init__(self, downscale: int):
        self.downscale = downscale

    def encode(self, image: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("the stages around the networks do not encode")

    def decode(self, latent: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("the stages around the networks do not decode")


def _to_numpy(tensor: Any) -> np.ndarray:
    """A Triton tensor as a private numpy copy (the request's buffer is shared memory).

    Tensors cross the stub boundary through DLPack, never through the stub's numpy bindings:
    the Python backend's C++ utilities are compiled against numpy 1.x, and under numpy 2 the
    arrays they wrap carry a wrong byte size (a BLS request built from numpy arrays arrives
    with 0-byte inputs, "input byte size mismatch ... got 0", seen with Triton 2.51).
    """
    return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).numpy().copy()


def _to_triton(pb: Any, name: str, value: np.ndarray) -> Any:
    """A numpy array as a Triton tensor (through DLPack, see :func:`_to_numpy`)."""
    return pb.Tensor.from_dlpack(name, torch.from_numpy(np.ascontiguousarray(value)))


class Stage:
    """One Python-backend model. Subclasses implement :meth:`run` for one request."""

    name = "stage"

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        self.pb = pb
        self.params = params
        self.dir = Path(args["model_repository"]) / str(args["model_version"])
        self.config = resolve_config(self.path("config"))
        if self.config.diffusion is None or self.config.autoencoder is None:
            raise ConfigError(f"{self.config.source}: needs the 'diffusion' and 'autoencoder' sections")
        self.seed = int(params.get("seed", "0"))
        self.pad_multiple = int(params.get("pad_multiple", "64"))

    # -- parameters and tensors --

    def path(self, key: str) -> Path:
        """A file parameter: absolute, or relative to this model's version folder."""
        p = Path(self.params[key])
        return p if p.is_absolute() else self.dir / p

    def optional_path(self, key: str) -> Optional[Path]:
        return self.path(key) if self.params.get(key) else None

    def geometry_pipeline(self) -> OneStepSR:
        """The pipeline's stage maths without networks (padding, bicubic, noise, scalings, crop)."""
        return OneStepSR(None, _Geometry(self.config.autoencoder.downscale), self.config,  # type: ignore[arg-type]
                         pad_multiple=self.pad_multiple)

    def tensor(self, request: Any, name: str, *, required: bool = True) -> Optional[np.ndarray]:
        t = self.pb.get_input_tensor_by_name(request, name)
        if t is None:
            if required:
                raise InputError(f"input '{name}' is missing")
            return None
        return _to_numpy(t)

    def per_item(self, request: Any, name: str, batch: int, default: int) -> List[int]:
        """An optional INT64 [1] input (SEED, TILE_INDEX) as one int per batch item."""
        v = self.tensor(request, name, required=False)
        if v is None:
            return [default] * batch
        return [int(x) for x in v.reshape(batch, -1)[:, 0]]

    # -- Triton's entry point --

    def execute(self, requests: List[Any]) -> List[Any]:
        responses = []
        for request in requests:
            try:
                outputs = self.run(request)
                tensors = [_to_triton(self.pb, k, v) for k, v in outputs.items()]
                responses.append(self.pb.InferenceResponse(output_tensors=tensors))
            except BimacoError as err:
                responses.append(self._error(f"{self.name}: {err}"))
            except Exception as err:  # a bug must not take the stub (and every later request) down
                responses.append(self._error(f"{self.name}: internal error {type(err).__name__}: {err}"))
        return responses

    def _error(self, message: str) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        raise NotImplementedError


def _check_lr(lr: np.ndarray, limit: int, what: str) -> None:
    """Triton has checked dtype and rank; sizes are ours to check."""
    if lr.ndim != 4 or lr.shape[-1] != 3:
        raise InputError(f"input '{N.LR}' has shape {list(lr.shape)}; expected [batch, H, W, 3] uint8 RGB")
    h, w = lr.shape[1:3]
    if h < 1 or w < 1:
        raise InputError(f"input '{N.LR}' is a {h}x{w} image; expected at least 1x1 pixels")
    if h > limit or w > limit:
        raise InputError(f"input '{N.LR}' is {h}x{w} pixels; {what}")


class Preprocess(Stage):
    """LR uint8 -> the 4x bicubic image (encoder input), lq (the UNet's), the prior noise, the LR size."""

    name = N.PREPROCESS

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        self.pipe = self.geometry_pipeline()
        self.tile = int(params.get("tile", "256"))
        self.lq_dtype = np.dtype(params.get("unet_dtype", "float32"))
        self.latent_channels = self.config.autoencoder.embed_dim

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        lr = self.tensor(request, N.LR)
        _check_lr(lr, self.tile, f"model '{N.ENSEMBLE}' takes one tile of at most {self.tile}x{self.tile}; "
                                 f"send larger images to '{N.TILED}'")
        batch = lr.shape[0]
        seeds = self.per_item(request, N.SEED, batch, 0)
        tiles = self.per_item(request, N.TILE_INDEX, batch, 0)
        images, lqs, noises = [], [], []
        ds = self.config.autoencoder.downscale
        with torch.no_grad():
            for i in range(batch):
                y0 = self.pipe.prepare(uint8_to_tensor(lr[i]))
                up = self.pipe.upsample(y0)
                like = torch.empty(1, self.latent_channels, up.shape[-2] // ds, up.shape[-1] // ds)
                noises.append(self.pipe.make_noise(like, tile_generator(seeds[i], tiles[i])).numpy())
                images.append(up.numpy())
                lqs.append(y0.numpy().astype(self.lq_dtype))
        hw = np.array([lr.shape[1:3]] * batch, dtype=np.int64)
        return {N.IMAGE: np.concatenate(images), N.LQ: np.concatenate(lqs), N.NOISE: np.concatenate(noises), N.LR_HW: hw}


class ToUNet(Stage):
    """The encoder's latent and the noise -> the UNet's x = (z * scale + k * eps) / s_in, and t."""

    name = N.TO_UNET

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        self.pipe = self.geometry_pipeline()
        self.x_dtype = np.dtype(params.get("unet_dtype", "float32"))

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        z_y = self.pipe.scale_latent(torch.from_numpy(self.tensor(request, N.LATENT)))
        noise = torch.from_numpy(self.tensor(request, N.NOISE))
        if tuple(noise.shape) != tuple(z_y.shape):
            raise InputError(f"'{N.NOISE}' has shape {list(noise.shape)}, the latent {list(z_y.shape)}")
        x_in = self.pipe.scale_input(self.pipe.prior(z_y, noise))
        t = self.pipe.timesteps(x_in.shape[0])
        return {N.X: x_in.numpy().astype(self.x_dtype), N.TIMESTEPS: t.numpy().reshape(-1, 1)}


class FromUNet(Stage):
    """The UNet's prediction -> the decoder's latent (pred_x0 / scale_factor, float32)."""

    name = N.FROM_UNET

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        self.pipe = self.geometry_pipeline()

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        out = torch.from_numpy(self.tensor(request, N.OUT).astype(np.float32, copy=False))
        return {N.LATENT: self.pipe.unscale_latent(out).numpy()}


class Postprocess(Stage):
    """The decoded image -> crop to 4x the LR size, clamp, uint8 (and the [-1, 1] SR for the tiler)."""

    name = N.POSTPROCESS

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        self.pipe = self.geometry_pipeline()

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        decoded = torch.from_numpy(self.tensor(request, N.DECODED))
        hw = self.tensor(request, N.LR_HW).reshape(-1, 2)
        srs, signed = [], []
        for i in range(decoded.shape[0]):
            crop = self.pipe.crop(decoded[i : i + 1], int(hw[i, 0]), int(hw[i, 1]))
            s = crop.clamp(-1.0, 1.0)  # as OneStepSR.stages / sample_signed
            signed.append(s.numpy())
            srs.append(tensor_to_uint8(s * 0.5 + 0.5))
        return {N.SR: np.stack(srs), N.SR_SIGNED: np.concatenate(signed)}


class _Network(Stage):
    """A network on one of our CPU runtimes (``runtime``: a backend of the registry)."""

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        self.runtime = params.get("runtime", "torch")
        vq_dtype = params.get("vq_dtype")
        if vq_dtype and vq_dtype not in _PRECISION_OF_DTYPE:
            raise ConfigError(f"{self.name}: parameter vq_dtype must be float16 or float32, got {vq_dtype!r}")
        # the torch autoencoder's precision (None: the device default, fp32 on a CPU)
        self.vq_precision = _PRECISION_OF_DTYPE[vq_dtype] if vq_dtype else None

    def spec(self, **kw: Any) -> BackendSpec:
        return BackendSpec(self.runtime, self.config, seed=self.seed, device="cpu", **kw)

    def vq_pipeline(self) -> OneStepSR:
        """The pipeline around this runtime's autoencoder (torch: checkpoint or seeded random
        weights in the VQ dtype; onnxruntime: the exported encoder/decoder graphs)."""
        if self.runtime == "onnxruntime":
            vq = make_backend(self.spec(artifacts=self.path("artifacts").parent)).autoencoder(None)
            return OneStepSR(None, vq, self.config, pad_multiple=self.pad_multiple)  # type: ignore[arg-type]
        vq = make_backend(self.spec()).autoencoder(self.optional_path("vq_ckpt"), self.vq_precision)
        return OneStepSR(None, vq, self.config, pad_multiple=self.pad_multiple)  # type: ignore[arg-type]


class VQEncoder(_Network):
    name = N.VQ_ENCODER

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        self.pipe = self.vq_pipeline()

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        z = self.pipe.vq_encode(torch.from_numpy(self.tensor(request, N.IMAGE)))
        return {N.LATENT: torch.as_tensor(z).numpy()}


class VQDecoder(_Network):
    name = N.VQ_DECODER

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        self.pipe = self.vq_pipeline()

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        return {N.IMAGE: self.pipe.vq_decode(torch.from_numpy(self.tensor(request, N.LATENT))).numpy()}


class UNet(_Network):
    name = N.UNET

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        if self.runtime == "onnxruntime":
            self.unet = make_backend(self.spec(artifacts=self.path("artifacts"))).unet()
        else:
            self.unet = make_backend(self.spec(ckpt=self.optional_path("unet_ckpt"))).unet()

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        x = torch.from_numpy(self.tensor(request, N.X))
        t = torch.from_numpy(self.tensor(request, N.TIMESTEPS).reshape(-1).astype(np.int64))
        lq = torch.from_numpy(self.tensor(request, N.LQ))
        with torch.no_grad():
            out = self.unet(x, t, lq)
        return {N.OUT: torch.as_tensor(out).to(torch.float32).numpy()}


class Tiled(Stage):
    """Any image up to ``max_size`` on a side: the pipeline's tiling, one ensemble request per tile
    (business logic scripting), blended by :class:`~bimaco_deploy.pipeline.tiling.TileCanvas`."""

    name = N.TILED

    def __init__(self, args: Dict[str, str], params: Dict[str, str], pb: Any):
        super().__init__(args, params, pb)
        self.tile = int(params.get("tile", "256"))
        self.stride = int(params["stride"]) if params.get("stride") else None
        self.max_size = int(params.get("max_size", "1024"))
        self.sf = self.config.diffusion.sf
        plan_tiles(1, 1, self.tile, self.stride)

    def _ensemble(self, crop: np.ndarray, seed: int, index: int, output: str) -> np.ndarray:
        pb = self.pb
        request = pb.InferenceRequest(
            model_name=N.ENSEMBLE,
            inputs=[_to_triton(pb, N.LR, crop[None]),
                    _to_triton(pb, N.SEED, np.array([[seed]], dtype=np.int64)),
                    _to_triton(pb, N.TILE_INDEX, np.array([[index]], dtype=np.int64))],
            requested_output_names=[output],
        )
        response = request.exec()
        if response.has_error():
            raise ServerError(f"tile {index}: {response.error().message()}")
        return _to_numpy(pb.get_output_tensor_by_name(response, output))[0]

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        lr = self.tensor(request, N.LR)
        _check_lr(lr, self.max_size, f"this server takes images of at most {self.max_size} pixels on a side")
        batch, h, w, _ = lr.shape
        seeds = self.per_item(request, N.SEED, batch, 0)
        tiles = plan_tiles(h, w, self.tile, self.stride)
        out = []
        for i in range(batch):
            if len(tiles) == 1:
                out.append(self._ensemble(lr[i], seeds[i], 0, N.SR))
                continue
            canvas = TileCanvas(1, h, w, self.sf)
            for t in tiles:  # in index order: the blend's float sums depend on it
                crop = lr[i, t.top : t.top + t.height, t.left : t.left + t.width]
                canvas.add(t, torch.from_numpy(self._ensemble(crop, seeds[i], t.index, N.SR_SIGNED))[None])
            out.append(tensor_to_uint8(canvas.result()))
        return {N.SR: np.stack(out)}


STAGES = {cls.name: cls for cls in (Preprocess, VQEncoder, ToUNet, UNet, FromUNet, VQDecoder, Postprocess, Tiled)}


def make_stage(name: str, args: Dict[str, str], params: Dict[str, str], pb: Any = None) -> Stage:
    """The stage ``name`` for a Python-backend model (``pb``: triton_python_backend_utils)."""
    if pb is None:
        import triton_python_backend_utils as pb  # only inside Triton's Python backend
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)} (parameters: {json.dumps(params)})")
    return STAGES[name](args, params, pb)
