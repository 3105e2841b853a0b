"""The ``tensorrt`` backend: run a TensorRT engine of the UNet (built by :func:`.builder.build_engine`).

:class:`TrtUNet` is a UNet callable ``unet(x, timesteps, lq) -> x0`` like the
other backends, so the SR pipeline takes it unchanged. Device buffers come
from cuda-python (``cuda.bindings.runtime``, or the older ``cuda.cudart``);
they are allocated once and grown only when a larger shape arrives; copies
and the launch are asynchronous on one stream, synchronised once per call.

Where TensorRT, cuda-python or a GPU is missing, construction raises
:class:`~bimaco_deploy.errors.BackendUnavailable` saying what to install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ...errors import ArtifactError, BackendUnavailable, InputError
from ..base import Backend, UNetFn, register
from . import builder as trt_builder

PathLike = Union[str, Path]

CUDA_PYTHON_HINT = "cuda-python (`pip install cuda-python`; on Jetson pick the version matching JetPack's CUDA)"


def import_cudart() -> Any:
    """The CUDA runtime bindings of cuda-python (new and old module layout)."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]  # cuda-python >= 12.6

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[import-not-found]

        return cudart
    except ImportError as err:
        raise BackendUnavailable(f"the TensorRT backend needs {CUDA_PYTHON_HINT}: {err}") from None


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python (err, *values) tuple, raising on an error code."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    code = int(err) if not hasattr(err, "value") else int(err.value)
    if code != 0:
        raise BackendUnavailable(f"CUDA error {err} in {what}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


@dataclass
class _Buffer:
    ptr: int = 0
    nbytes: int = 0


class TrtUNet:
    """A deserialized engine plus one execution context, callable as the UNet."""

    def __init__(self, engine_path: PathLike, *, plugin_lib: Optional[PathLike] = None):
        path = Path(engine_path)
        if not path.is_file():
            raise ArtifactError(f"{path}: engine file not found (build it with `bimaco-deploy build`)")
        trt = trt_builder.import_tensorrt()
        self._cudart = import_cudart()
        n = _check(self._cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not n:
            raise BackendUnavailable("no CUDA device: the TensorRT backend needs an NVIDIA GPU")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        # The engine's plugin layers are recreated through the registry: load the library first.
        self.plugin_library = trt_builder.load_plugin_library(trt, trt.get_plugin_registry(), plugin_lib)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"{path}: TensorRT could not deserialize the engine (built with another TensorRT version or GPU?)"
            )
        self.context = self.engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.inputs: List[str] = []
        self.outputs: List[str] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
            else:
                self.outputs.append(name)
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.inputs + self.outputs}
        self._buffers: Dict[str, _Buffer] = {n: _Buffer() for n in self.inputs + self.outputs}

    # ------------------------------------------------------------------ buffers
    def _ensure(self, name: str, nbytes: int) -> int:
        buf = self._buffers[name]
        if nbytes > buf.nbytes:  # grow only; smaller shapes reuse the allocation
            if buf.ptr:
                _check(self._cudart.cudaFree(buf.ptr), "cudaFree")
            buf.ptr = int(_check(self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            buf.nbytes = nbytes
        return buf.ptr

    def close(self) -> None:
        """Free the device buffers and the stream (idempotent)."""
        for buf in self._buffers.values():
            if buf.ptr:
                self._cudart.cudaFree(buf.ptr)
                buf.ptr, buf.nbytes = 0, 0
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:  # pragma: no cover - depends on GC timing
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ running
    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run the engine on named host arrays; returns the named outputs."""
        cudart = self._cudart
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise InputError(f"engine inputs {missing} were not given (engine inputs: {self.inputs})")
        host_in = {}
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            host_in[name] = arr
            if not self.context.set_input_shape(name, tuple(arr.shape)):
                raise InputError(
                    f"input '{name}' shape {tuple(arr.shape)} is outside the engine's optimization profile "
                    f"{self._profile(name)}; rebuild with a wider --min/--max"
                )
            ptr = self._ensure(name, arr.nbytes)
            _check(
                cudart.cudaMemcpyAsync(
                    ptr, arr.ctypes.data, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream
                ),
                f"copy of '{name}' to the device",
            )
            self.context.set_tensor_address(name, ptr)
        host_out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, dtype=self._dtypes[name])
            host_out[name] = out
            self.context.set_tensor_address(name, self._ensure(name, out.nbytes))
        if not self.context.execute_async_v3(self._stream):
            raise BackendUnavailable("TensorRT execute_async_v3 failed; see the TensorRT log above")
        for name, out in host_out.items():
            _check(
                cudart.cudaMemcpyAsync(
                    out.ctypes.data,
                    self._buffers[name].ptr,
                    out.nbytes,
                    cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                    self._stream,
                ),
                f"copy of '{name}' to the host",
            )
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return host_out

    def _profile(self, name: str) -> Tuple[Any, ...]:
        try:
            return tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
        except Exception:  # pragma: no cover - older bindings
            return ()

    def __call__(self, x: Any, timesteps: Any, lq: Any) -> Any:
        """UNet callable: torch tensors or numpy arrays in, the same kind out (float32)."""
        as_torch = hasattr(x, "detach")
        feeds = {}
        for name, value in zip(("x", "timesteps", "lq"), (x, timesteps, lq)):
            arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            feeds[name] = arr
        if set(self.inputs) != set(feeds):
            # an engine from another exporter: feed by position
            feeds = dict(zip(self.inputs, feeds.values()))
        out = self.run(feeds)[self.outputs[0]].astype(np.float32, copy=False)
        if as_torch:
            import torch

            return torch.from_numpy(np.array(out))
        return out


@register
class TensorRTBackend(Backend):
    """A TensorRT engine with the bimaco plugin."""

    name = "tensorrt"
    description = "a TensorRT engine with the bimaco plugin (needs --engine)"

    def _engine(self) -> Path:
        if self.spec.engine is None:
            raise ArtifactError("--backend tensorrt needs --engine FILE (written by `bimaco-deploy build`)")
        return Path(self.spec.engine)

    def unet(self) -> UNetFn:
        return TrtUNet(self._engine(), plugin_lib=self.spec.plugin_lib)

    def float_baseline(self) -> Tuple[UNetFn, str]:
        engine = self._engine()
        path = trt_builder.float_engine_path(engine)
        if not path.is_file():
            raise ArtifactError(
                f"{path} not found: the TensorRT baseline is the float model built the same way; export with "
                f"--float-baseline and run `bimaco-deploy build` again (it builds {path.name} beside "
                f"{engine.name}), or pass --no-baseline"
            )
        return TrtUNet(path, plugin_lib=self.spec.plugin_lib), f"tensorrt {path.name}"

    def vq_precisions(self) -> Tuple[str, ...]:
        from .vq import TRT_VQ_PRECISIONS

        return TRT_VQ_PRECISIONS

    def autoencoder(self, vq_ckpt: Optional[PathLike] = None, precision: Optional[str] = None, *, graphs=None):
        """The VQ engines built beside the UNet engine (`build --vq-precision`); without them the
        ONNX Runtime autoencoder on the CPU, said with a warning."""
        import warnings

        from ...models.precision import resolve_precision
        from ..onnxruntime import OnnxRuntimeBackend
        from .vq import TrtVQ, vq_engine_paths

        precision = resolve_precision(precision, "cuda")
        self.check_vq_precision(precision)
        if all(p.is_file() for p in vq_engine_paths(self._engine(), precision)):
            return TrtVQ(self._engine(), precision, TrtUNet, plugin_lib=self.spec.plugin_lib)
        warnings.warn(f"no {precision} VQ engines beside {self._engine()} (`bimaco-deploy build --vq-precision "
                      f"{precision}`): the autoencoder runs in ONNX Runtime on the CPU", stacklevel=2)
        from dataclasses import replace

        return OnnxRuntimeBackend(replace(self.spec, device="cpu")).autoencoder(vq_ckpt, precision, graphs=graphs)
