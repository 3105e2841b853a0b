"""The backends, in one place: what ``--backend NAME`` means for infer, check and bench.

Every backend gives a UNet callable ``unet(x, timesteps, lq) -> x0`` (float32 tensors in,
float32 tensor out) that the SR pipeline plugs in; the VQ autoencoder around it is the
torch reference, or the exported ONNX graphs when artifacts are given.

| name          | UNet runs on                                              | needs                 |
|---------------|-----------------------------------------------------------|-----------------------|
| torch-ref     | the PyTorch reference (float maths on sign values)        | config (+ checkpoint) |
| torch         | packed 1-bit weights on the bimaco torch ops              | config (+ checkpoint) |
| onnxruntime   | ``unet_portable.onnx`` of an export                       | --artifacts           |
| tensorrt      | a TensorRT engine with the bimaco plugin                  | --engine              |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import torch

from ..errors import ArtifactError, BimacoError
from ..models.config import ModelConfig, load_config

PathLike = Union[str, Path]
UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BACKENDS = ("torch-ref", "torch", "onnxruntime", "tensorrt")
FLOAT_ONNX = "unet_float.onnx"  # written by `export --float-baseline`


@dataclass
class BackendSpec:
    """Where a backend's model comes from."""

    name: str
    config: ModelConfig
    ckpt: Optional[PathLike] = None
    seed: Optional[int] = None
    artifacts: Optional[PathLike] = None
    engine: Optional[PathLike] = None
    plugin_lib: Optional[PathLike] = None
    device: str = "cpu"
    threads: Optional[int] = None  # ONNX Runtime intra-op threads (torch: torch.set_num_threads)


def resolve_config(config: Union[PathLike, ModelConfig]) -> ModelConfig:
    """A config path, built-in name or already-loaded config."""
    return config if isinstance(config, ModelConfig) else load_config(config)


def make_unet(spec: BackendSpec) -> UNetFn:
    """The UNet callable of a backend (raises BimacoError naming what is missing)."""
    if spec.name not in BACKENDS:
        raise BimacoError(f"unknown backend {spec.name!r}; choose one of {', '.join(BACKENDS)}")
    if spec.name in ("torch-ref", "torch"):
        from ..models import load_unet

        model = load_unet(spec.config, spec.ckpt, seed=spec.seed)
        if spec.name == "torch":
            from .packed_torch import pack_unet

            model = pack_unet(model, inplace=True)
        if spec.device != "cpu":
            model = model.to(spec.device)
        return model
    if spec.name == "onnxruntime":
        if spec.artifacts is None:
            raise ArtifactError("--backend onnxruntime needs --artifacts DIR (written by `bimaco-deploy export`)")
        from .ort_backend import OrtUNet

        return OrtUNet(spec.artifacts, device=spec.device if spec.device != "cpu" else "cpu", threads=spec.threads)
    if spec.engine is None:
        raise ArtifactError("--backend tensorrt needs --engine FILE (written by `bimaco-deploy build`)")
    from .trt_backend import TrtUNet

    return TrtUNet(spec.engine, plugin_lib=spec.plugin_lib)


def float_engine_path(engine: PathLike) -> Path:
    """Where ``build`` puts the float baseline's engine beside ENGINE: unet.plan -> unet_float.plan."""
    p = Path(engine)
    return p.with_name(f"{p.stem}_float{p.suffix}")


def make_float_baseline(spec: BackendSpec) -> Tuple[UNetFn, str]:
    """The float model of the same family on the same backend, and a line saying what it is.

    torch / torch-ref: the float twin of the config on the reference torch path (seeded
    random weights: only its speed is used). onnxruntime: ``unet_float.onnx`` of the
    artifact directory, in the same session setup. tensorrt: the engine ``build`` made
    from that file beside the binary one, with the same profile and precision flags.
    """
    if spec.name in ("torch-ref", "torch"):
        from dataclasses import replace

        from ..models import float_twin, load_unet

        cfg = replace(spec.config, unet=float_twin(spec.config.unet))
        return load_unet(cfg, None, seed=spec.seed or 0).to(spec.device), "torch float32 reference (float twin)"
    if spec.name == "onnxruntime":
        if spec.artifacts is None:
            raise ArtifactError("--backend onnxruntime needs --artifacts DIR (written by `bimaco-deploy export`)")
        path = Path(spec.artifacts) / FLOAT_ONNX
        if not path.is_file():
            raise ArtifactError(
                f"{path} not found: the onnxruntime baseline is the float model exported the same way; "
                "re-export with `bimaco-deploy export --float-baseline ...`, or pass --no-baseline"
            )
        from .ort_backend import OrtUNet

        unet = OrtUNet(path, device=spec.device if spec.device != "cpu" else "cpu", threads=spec.threads)
        return unet, f"onnxruntime {FLOAT_ONNX} ({', '.join(unet.providers)})"
    if spec.name == "tensorrt":
        if spec.engine is None:
            raise ArtifactError("--backend tensorrt needs --engine FILE (written by `bimaco-deploy build`)")
        path = float_engine_path(spec.engine)
        if not path.is_file():
            raise ArtifactError(
                f"{path} not found: the TensorRT baseline is the float model built the same way; export with "
                f"--float-baseline and run `bimaco-deploy build` again (it builds {path.name} beside "
                f"{Path(spec.engine).name}), or pass --no-baseline"
            )
        from .trt_backend import TrtUNet

        return TrtUNet(path, plugin_lib=spec.plugin_lib), f"tensorrt {path.name}"
    raise BimacoError(f"unknown backend {spec.name!r}; choose one of {', '.join(BACKENDS)}")


def make_vq(spec: BackendSpec, vq_ckpt: Optional[PathLike]) -> Any:
    """The autoencoder for the pipeline: the exported graphs for onnxruntime/tensorrt when an
    artifact directory holds them, else the torch reference (checkpoint or seeded random)."""
    if spec.name in ("onnxruntime", "tensorrt") and spec.artifacts is not None:
        art = Path(spec.artifacts)
        if (art / "vq_encoder.onnx").is_file() and (art / "vq_decoder.onnx").is_file() and vq_ckpt is None:
            from .ort_backend import OrtVQ

            return OrtVQ(art, device=spec.device if spec.device != "cpu" else "cpu")
    from ..models.autoencoder import load_autoencoder

    if spec.config.autoencoder is None:
        raise BimacoError(f"{spec.config.source}: missing section 'autoencoder' (needed for super-resolution)")
    return load_autoencoder(spec.config.autoencoder, vq_ckpt, seed=spec.seed)


def make_pipeline(
    spec: BackendSpec,
    vq_ckpt: Optional[PathLike] = None,
    *,
    vq_dtype: Optional[torch.dtype] = None,
    pad_multiple: int = 64,
):
    """The one-step SR pipeline with this backend's UNet."""
    from .pipeline import OneStepSR

    return OneStepSR(make_unet(spec), make_vq(spec, vq_ckpt), spec.config, vq_dtype=vq_dtype, pad_multiple=pad_multiple)
