"""What a backend is, and the registry of backend names (``--backend NAME``).

A backend turns a :class:`BackendSpec` (config, checkpoint, artifacts, engine, device)
into the pieces the rest of the tool plugs together:

* :meth:`Backend.unet`: the UNet callable ``unet(x, timesteps, lq) -> x0`` (float32 torch
  tensors in and out) that the SR pipeline calls;
* :meth:`Backend.float_baseline`: the float model of the same family, run the same way,
  that every speed figure is compared with;
* :meth:`Backend.autoencoder`: the VQ autoencoder the pipeline wraps around the UNet, at a
  ``--vq-precision`` (:mod:`~bimaco_deploy.models.precision`) the backend can run on its
  device (:meth:`Backend.vq_precisions`);
* :meth:`Backend.parity_runner`: what ``check`` needs to compare layer by layer.

Each backend is one module of this package that defines a :class:`Backend` subclass and
decorates it with :func:`register`. :func:`get_backend` imports the package's modules on
first use, so adding a backend means adding one module: no list of names to edit.
Heavy libraries (onnxruntime, tensorrt, cuda-python) are imported inside the methods
that need them, so listing the backends costs nothing.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, FrozenSet, List, Optional, Protocol, Tuple, Type, TypeVar, Union

import numpy as np
import torch

from ..errors import BackendUnavailable, BimacoError, ConfigError, InputError
from ..models.config import ModelConfig, load_config

PathLike = Union[str, Path]
UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: Makes (or finds) a folder holding vq_encoder.onnx / vq_decoder.onnx at a precision; the
#: pipeline passes one (calibrating and caching, :func:`bimaco_deploy.pipeline.calibration.ensure_vq_graphs`).
VQGraphs = Callable[[str], PathLike]


class VQLike(Protocol):
    """Any autoencoder the pipeline can use: ``encode`` (no quantization) and ``decode``
    (quantizing first), with the spatial ``downscale`` factor (4 for VQ-f4)."""

    downscale: int

    def encode(self, image: Any) -> Any: ...

    def decode(self, latent: Any) -> Any: ...


@dataclass
class BackendSpec:
    """Where a backend's model comes from: the options of ``infer``, ``check`` and ``bench``."""

    name: str
    config: ModelConfig
    ckpt: Optional[PathLike] = None
    seed: Optional[int] = None
    artifacts: Optional[PathLike] = None
    engine: Optional[PathLike] = None
    plugin_lib: Optional[PathLike] = None
    device: str = "cpu"
    threads: Optional[int] = None  # ONNX Runtime intra-op threads (torch: torch.set_num_threads)
    isa: Optional[str] = None  # packed torch backend: force the CPU kernels onto this instruction set


#: The command-line option behind each optional BackendSpec field (messages name the option).
SPEC_OPTIONS: Dict[str, str] = {"ckpt": "--ckpt", "artifacts": "--artifacts", "engine": "--engine",
                                "plugin_lib": "--plugin", "isa": "--isa"}

_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


def check_device_name(device: str) -> str:
    """``device`` if it is cpu, cuda, cuda:N or auto; else an InputError naming ``--device``."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device.strip().lower()):
        raise InputError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto")
    return device.strip().lower()


def torch_device(device: str) -> str:
    """The torch device for ``device`` ("auto": CUDA when torch can use it), or a clear error when
    this torch build or machine cannot use CUDA."""
    device = check_device_name(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if torch.version.cuda is None:
            raise BackendUnavailable(
                f"--device {device}: this torch ({torch.__version__}) is a CPU-only build; use --device cpu, or "
                "install a CUDA build of torch (see README, Install)")
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"--device {device}: torch {torch.__version__} sees no CUDA device "
                                     "(no GPU, or no driver); use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise BackendUnavailable(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


class ParityRunner(ABC):
    """What ``check`` needs from a backend: one binary layer on a given input, and the
    whole UNet together with the input each binary layer saw (numpy in and out)."""

    float_dtype: np.dtype
    layer_names: List[str]
    layer_ranks: Dict[str, int]  # the rank of each layer's input (margins are per row)
    #: ONNX metadata of the artifact under test (config, contract, weights), None for in-memory backends
    metadata: Optional[Dict[str, str]] = None
    #: where ``metadata`` comes from, for messages
    source: Optional[str] = None
    #: one line: what runs (backend, file, ISA ...)
    description: str = ""

    @abstractmethod
    def run_layer(self, name: str, x: np.ndarray) -> np.ndarray:
        """The output of binary layer ``name`` for input ``x``."""

    @abstractmethod
    def run_unet(self, x: np.ndarray, t: np.ndarray, lq: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """The UNet output and, per binary layer name, the input that layer saw."""


class Backend(ABC):
    """One way to run the model. Subclasses set :attr:`name` and :attr:`description` and
    are registered with :func:`register`."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line: what the UNet runs on, and what it needs
    #: the optional BackendSpec fields (SPEC_OPTIONS) this backend reads; giving another is an error
    uses: ClassVar[FrozenSet[str]] = frozenset({"ckpt"})
    #: why a field is not used, per field (completes the error message)
    unused_because: ClassVar[Dict[str, str]] = {
        "ckpt": "its UNet does not come from a checkpoint",
        "artifacts": "it builds the UNet from --config and --ckpt; --artifacts is for onnxruntime",
        "engine": "only --backend tensorrt runs an engine",
        "plugin_lib": "only --backend tensorrt loads the TensorRT plugin",
        "isa": "only --backend torch runs the packed CPU kernels",
    }

    def __init__(self, spec: BackendSpec):
        self.spec = spec
        self._check_options()

    def _check_options(self) -> None:
        """An option this backend does not use is an error, not silently ignored; the device must be valid."""
        for field_name, option in SPEC_OPTIONS.items():
            if getattr(self.spec, field_name) is not None and field_name not in self.uses:
                why = self.unused_because.get(field_name, f"--backend {self.name} does not read it")
                raise InputError(f"{option} {getattr(self.spec, field_name)} is not used by --backend {self.name} "
                                 f"({why}); drop it")
        self.check_device()

    def check_device(self) -> None:
        """Refuse a device this backend cannot use, before anything is loaded (default: the name only)."""
        check_device_name(self.spec.device)

    @abstractmethod
    def unet(self) -> UNetFn:
        """The UNet callable (raises :class:`BimacoError` naming what is missing)."""

    @abstractmethod
    def float_baseline(self) -> Tuple[UNetFn, str]:
        """The float model of the same family on this backend, and a line saying what it is."""

    def vq_precisions(self) -> Tuple[str, ...]:
        """The autoencoder precisions this backend runs on its device (torch: fp32/fp16/bf16; on a
        CPU also int8, as calibrated ONNX Runtime graphs beside the torch UNet)."""
        if torch.device(torch_device(self.spec.device)).type == "cpu":
            return ("fp32", "fp16", "bf16", "int8")
        return ("fp32", "fp16", "bf16")

    def check_vq_precision(self, precision: str) -> None:
        """Raise :class:`BackendUnavailable` naming what runs ``precision`` when this backend cannot."""
        if precision not in self.vq_precisions():
            raise BackendUnavailable(
                f"--vq-precision {precision} is not available on --backend {self.name} ({self.spec.device}); "
                f"it runs {', '.join(self.vq_precisions())}. {self._vq_hint(precision)}"
            )

    def _vq_hint(self, precision: str) -> str:
        if precision == "int8":
            return "INT8 runs on --backend torch or onnxruntime on a CPU (calibrated QDQ graphs), or tensorrt (engines)"
        if precision == "bf16":
            return "bf16 runs in torch: --backend torch or torch-ref"
        return ""

    def autoencoder(self, vq_ckpt: Optional[PathLike] = None, precision: Optional[str] = None, *,
                    graphs: Optional[VQGraphs] = None) -> VQLike:
        """The autoencoder at ``precision`` (None: the device default, fp32 on CPU, fp16 on GPU).

        Torch precisions run the torch model (checkpoint, or seeded random weights) as a
        :class:`~bimaco_deploy.models.precision.TorchVQ`; int8 runs the calibrated QDQ graphs
        in ONNX Runtime, from the folder ``graphs("int8")`` returns.
        """
        from ..models.precision import resolve_precision

        precision = resolve_precision(precision, self.spec.device)
        self.check_vq_precision(precision)
        if precision == "int8":
            return self._onnx_autoencoder(vq_ckpt, precision, graphs)
        return self._torch_autoencoder(vq_ckpt, precision)

    def _torch_autoencoder(self, vq_ckpt: Optional[PathLike], precision: str) -> VQLike:
        from ..models.autoencoder import load_autoencoder
        from ..models.precision import TorchVQ

        cfg = self.spec.config
        if cfg.autoencoder is None:
            raise ConfigError(f"{cfg.source}: missing section 'autoencoder' (needed for super-resolution)")
        return TorchVQ(load_autoencoder(cfg.autoencoder, vq_ckpt, seed=self.spec.seed), precision, torch_device(self.spec.device))

    def _onnx_autoencoder(self, vq_ckpt: Optional[PathLike], precision: str, graphs: Optional[VQGraphs]) -> VQLike:
        # the onnxruntime backend's autoencoder on the CPU, looked up by name (no import cycle)
        from dataclasses import replace

        ort = get_backend("onnxruntime")(replace(self.spec, device="cpu", **{f: None for f in SPEC_OPTIONS}))
        return ort.autoencoder(vq_ckpt, precision, graphs=graphs)

    def describe_autoencoder(self, vq: VQLike, vq_ckpt: Optional[PathLike] = None) -> str:
        """One line: which autoencoder :meth:`autoencoder` gave (ONNX graphs or torch, and its weights)."""
        described = getattr(vq, "description", None)
        if isinstance(described, str):
            return described
        weights = f"checkpoint {vq_ckpt}" if vq_ckpt is not None else \
            f"seeded random weights (seed {0 if self.spec.seed is None else self.spec.seed})"
        precision = getattr(vq, "precision", None)
        return f"torch VQ autoencoder{f' ({precision})' if precision else ''}, {weights}"

    def describe_unet(self) -> str:
        """One line: which UNet weights this backend runs (checkpoint, or seeded random weights)."""
        if self.spec.ckpt is not None:
            return f"checkpoint {self.spec.ckpt}"
        return f"seeded random weights (seed {0 if self.spec.seed is None else self.spec.seed})"

    def random_weights(self) -> bool:
        """Whether the UNet runs on random weights (outputs are then noise)."""
        return self.spec.ckpt is None

    def parity_runner(self) -> ParityRunner:
        """Layer-by-layer access for ``check``; backends that cannot give it say so."""
        raise BackendUnavailable(f"`check` does not support backend {self.name!r} yet")


_REGISTRY: Dict[str, Type[Backend]] = {}
_DISCOVERED = False
B = TypeVar("B", bound=Type[Backend])


def register(cls: B) -> B:
    """Class decorator: make ``cls`` available as ``--backend cls.name``."""
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise RuntimeError(f"backend name {cls.name!r} registered twice: {other.__module__} and {cls.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every module of this package once, so that each registers its backend."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module(__package__)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{__package__}."):
        importlib.import_module(info.name)
    _DISCOVERED = True


def backend_names() -> List[str]:
    """Every registered backend name, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Type[Backend]:
    """The backend class registered as ``name``."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BimacoError(f"unknown backend {name!r}; choose one of {', '.join(sorted(_REGISTRY))}") from None


def make_backend(spec: BackendSpec) -> Backend:
    """The backend ``spec.name``, set up from ``spec``."""
    return get_backend(spec.name)(spec)


def resolve_config(config: Union[PathLike, ModelConfig]) -> ModelConfig:
    """A config path, built-in name or already-loaded config."""
    return config if isinstance(config, ModelConfig) else load_config(config)
