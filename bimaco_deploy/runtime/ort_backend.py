"""ONNX Runtime backend for the portable graphs (``unet_portable.onnx``, the VQ graphs).

:class:`OrtUNet` is a UNet callable ``unet(x, timesteps, lq) -> out`` with the
signature the SR pipeline expects (torch tensors in, torch tensors out; numpy
arrays work too and come back as numpy). :class:`OrtVQ` wraps the VQ encoder
and decoder. CPU always; the CUDA provider when onnxruntime-gpu and a GPU are
present (``device="cuda"`` insists, ``"auto"`` prefers it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ArtifactError, BackendUnavailable, InputError

PathLike = Union[str, Path]

PORTABLE_FILE = "unet_portable.onnx"
VQ_ENCODER_FILE = "vq_encoder.onnx"
VQ_DECODER_FILE = "vq_decoder.onnx"


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from e
    return ort


def providers_for(device: str = "auto") -> List[str]:
    """Execution providers for ``device`` ("cpu", "cuda" or "auto")."""
    available = _ort().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "auto"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device == "cuda":
            raise BackendUnavailable(
                f"ONNX Runtime has no CUDA provider here (available: {', '.join(available)}); "
                "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use device='cpu'"
            )
        return ["CPUExecutionProvider"]
    raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")


def make_session(model: Union[PathLike, bytes, Any], *, device: str = "auto", threads: Optional[int] = None):
    """An InferenceSession for an ONNX file, serialized bytes or ModelProto.

    Memory-reuse planning is switched off: with thousands of nodes and dynamic
    H/W, ONNX Runtime's reuse planner takes tens of seconds at session start
    (measured: 24 s vs 1.6 s for the tiny UNet), while intermediates are still
    freed after their last use.
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.enable_mem_reuse = False
    so.log_severity_level = 3  # warnings about fp16 fallbacks are expected noise
    if threads:
        so.intra_op_num_threads = int(threads)
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, (bytes, bytearray)):
        path = Path(model)
        if not path.is_file():
            raise ArtifactError(f"{path}: ONNX file not found")
        model = str(path)
    try:
        return ort.InferenceSession(model, so, providers=providers_for(device))
    except Exception as e:  # onnxruntime raises its own exception types
        if "bimaco" in str(e) or "BinaryConv2d" in str(e) or "BinaryLinear" in str(e):
            raise ArtifactError(
                "ONNX Runtime cannot run the custom-node graph (unet.onnx); use unet_portable.onnx"
            ) from e
        raise ArtifactError(f"ONNX Runtime could not load the model: {str(e).splitlines()[0][:300]}") from e


def model_metadata(session: Any) -> Dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def _to_numpy(v: Any, dtype: np.dtype, what: str) -> Tuple[np.ndarray, bool]:
    is_torch = hasattr(v, "detach")
    arr = v.detach().cpu().numpy() if is_torch else np.asarray(v)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{what} must be a numeric tensor, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr.astype(dtype, copy=False)), is_torch


def _like(out: np.ndarray, as_torch: bool, ref: Any = None):
    if not as_torch:
        return out
    import torch

    t = torch.from_numpy(np.ascontiguousarray(out.astype(np.float32, copy=False)))
    return t.to(ref.device) if ref is not None and hasattr(ref, "device") else t


def _resolve(artifacts: PathLike, filename: str) -> Path:
    p = Path(artifacts)
    if p.is_dir():
        p = p / filename
    if not p.is_file():
        raise ArtifactError(f"{p}: not found (run `bimaco-deploy export` first, or point at the artifact directory)")
    return p


class OrtUNet:
    """The exported UNet in ONNX Runtime: ``out = unet(x, timesteps, lq)``.

    ``artifacts``: the export directory (uses ``unet_portable.onnx``) or an
    ONNX file with the same inputs. Checks shapes before running: x [N, C, H, W]
    with H, W multiples of the model's ``size_multiple`` (from metadata), lq
    the same spatial size, timesteps [N].
    """

    def __init__(self, artifacts: PathLike, *, device: str = "auto", threads: Optional[int] = None):
        self.path = _resolve(artifacts, PORTABLE_FILE)
        self.session = make_session(self.path, device=device, threads=threads)
        self.metadata = model_metadata(self.session)
        if self.metadata.get("graph_form") == "custom":
            raise ArtifactError(f"{self.path}: holds custom bimaco nodes; ONNX Runtime needs unet_portable.onnx")
        self.size_multiple = int(self.metadata.get("size_multiple", "1"))
        self.float_dtype = np.dtype(self.metadata.get("float_dtype", "float32"))
        ins = {i.name: i for i in self.session.get_inputs()}
        missing = {"x", "timesteps", "lq"} - set(ins)
        if missing:
            raise ArtifactError(f"{self.path}: not a UNet graph (inputs {sorted(ins)}, missing {sorted(missing)})")
        self.channels = ins["x"].shape[1] if isinstance(ins["x"].shape[1], int) else None
        self.lq_channels = ins["lq"].shape[1] if isinstance(ins["lq"].shape[1], int) else None
        self.providers = self.session.get_providers()

    def check_inputs(self, x_shape: Sequence[int], t_shape: Sequence[int], lq_shape: Sequence[int]) -> None:
        """Raise :class:`InputError` for shapes this model cannot take."""
        if len(x_shape) != 4:
            raise InputError(f"x must be [N, C, H, W], got shape {tuple(x_shape)}")
        n, c, h, w = x_shape
        if self.channels is not None and c != self.channels:
            raise InputError(f"x has {c} channels, the model expects {self.channels}")
        m = self.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise InputError(
                f"x is {h}x{w}; this model needs H and W to be positive multiples of {m} "
                f"(window partition at every level and skip concatenations); pad the input first"
            )
        if len(lq_shape) != 4 or tuple(lq_shape[2:]) != (h, w) or lq_shape[0] != n:
            raise InputError(f"lq has shape {tuple(lq_shape)}; expected [{n}, {self.lq_channels}, {h}, {w}] (same size as x)")
        if self.lq_channels is not None and lq_shape[1] != self.lq_channels:
            raise InputError(f"lq has {lq_shape[1]} channels, the model expects {self.lq_channels}")
        if tuple(t_shape) != (n,):
            raise InputError(f"timesteps has shape {tuple(t_shape)}; expected [{n}] (one per batch element)")

    def run(self, x: np.ndarray, timesteps: np.ndarray, lq: np.ndarray, extra_outputs: Sequence[str] = ()) -> List[np.ndarray]:
        """Numpy in, numpy out; ``extra_outputs`` names further graph outputs to fetch."""
        self.check_inputs(x.shape, timesteps.shape, lq.shape)
        feeds = {"x": x.astype(self.float_dtype, copy=False), "timesteps": timesteps.astype(np.int64, copy=False),
                 "lq": lq.astype(self.float_dtype, copy=False)}
        return self.session.run(["out", *extra_outputs], feeds)

    def __call__(self, x: Any, timesteps: Any, lq: Any):
        xa, as_torch = _to_numpy(x, self.float_dtype, "x")
        ta, _ = _to_numpy(timesteps, np.int64, "timesteps")
        la, _ = _to_numpy(lq, self.float_dtype, "lq")
        out = self.run(xa, ta, la)[0]
        return _like(out.astype(np.float32, copy=False), as_torch, x)


class OrtVQ:
    """The exported VQ autoencoder: ``encode(image) -> latent``, ``decode(latent) -> image`` (float32 IO)."""

    def __init__(self, artifacts: PathLike, *, device: str = "auto", threads: Optional[int] = None):
        self.encoder = make_session(_resolve(artifacts, VQ_ENCODER_FILE), device=device, threads=threads)
        self.decoder = make_session(_resolve(artifacts, VQ_DECODER_FILE), device=device, threads=threads)
        meta = model_metadata(self.encoder)
        self.downscale = int(meta.get("downscale", "4"))

    def encode(self, image: Any):
        arr, as_torch = _to_numpy(image, np.float32, "image")
        if arr.ndim != 4 or arr.shape[2] % self.downscale or arr.shape[3] % self.downscale:
            raise InputError(f"image has shape {arr.shape}; expected [N, 3, H, W] with H, W multiples of {self.downscale}")
        return _like(self.encoder.run(None, {"image": arr})[0], as_torch, image)

    def decode(self, latent: Any):
        arr, as_torch = _to_numpy(latent, np.float32, "latent")
        if arr.ndim != 4:
            raise InputError(f"latent has shape {arr.shape}; expected [N, C, h, w]")
        return _like(self.decoder.run(None, {"latent": arr})[0], as_torch, latent)


def binary_layer_table(metadata: Dict[str, str]) -> List[Dict[str, Any]]:
    """The per-layer tensor names recorded by the exporter (name, input, output, rank)."""
    raw = metadata.get("binary_layers")
    if not raw:
        raise ArtifactError("the UNet artifact has no 'binary_layers' metadata (exported by an older version?)")
    return [dict(zip(("name", "input", "output", "rank"), row)) for row in json.loads(raw)]
