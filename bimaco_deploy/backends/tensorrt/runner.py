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

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ...errors import ArtifactError, BackendUnavailable, InputError
from ...export.artifacts import UNET_FILE
from ..base import Backend, ParityRunner, UNetFn, register
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


class Bindings:
    """What the execution context was last told, per tensor: a shape or an address is set again
    only when it changed. Setting an input shape makes TensorRT call every plugin layer's
    onShapeChange (177 of them in the UNet); the buffers only ever grow, so addresses rarely
    change either, and repeated calls on one size then go straight to enqueue."""

    def __init__(self) -> None:
        self._last: Dict[Tuple[str, str], Any] = {}

    def changed(self, kind: str, name: str, value: Any) -> bool:
        """True (and remember ``value``) when ``value`` differs from the last one for (kind, name)."""
        key = (kind, name)
        if self._last.get(key, _UNSET) == value:
            return False
        self._last[key] = value
        return True

    def forget(self) -> None:
        """After a failure the context's state is unknown: set everything again next time."""
        self._last.clear()


_UNSET = object()


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
        self._bindings = Bindings()

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
            if self._bindings.changed("shape", name, tuple(arr.shape)) and not self.context.set_input_shape(
                name, tuple(arr.shape)
            ):
                self._bindings.forget()
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
            if self._bindings.changed("address", name, ptr):
                self.context.set_tensor_address(name, ptr)
        host_out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, dtype=self._dtypes[name])
            host_out[name] = out
            ptr = self._ensure(name, out.nbytes)
            if self._bindings.changed("address", name, ptr):
                self.context.set_tensor_address(name, ptr)
        if not self.context.execute_async_v3(self._stream):
            self._bindings.forget()
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
    uses = frozenset({"engine", "plugin_lib", "artifacts"})
    unused_because = {**Backend.unused_because, "ckpt": "the UNet comes from --engine: its weights were fixed at export"}

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

        asked = precision
        precision = resolve_precision(precision, "cuda")
        self.check_vq_precision(precision)
        if all(p.is_file() for p in vq_engine_paths(self._engine(), precision)):
            return TrtVQ(self._engine(), precision, TrtUNet, plugin_lib=self.spec.plugin_lib)
        # no engines: the ONNX Runtime autoencoder on the CPU, at the CPU default unless one was asked for
        warnings.warn(f"no {precision} VQ engines beside {self._engine()} (`bimaco-deploy build --vq-precision "
                      f"{precision}`): the autoencoder runs in ONNX Runtime on the CPU", stacklevel=2)
        cpu_spec = replace(self.spec, engine=None, plugin_lib=None, device="cpu")
        return OnnxRuntimeBackend(cpu_spec).autoencoder(vq_ckpt, asked, graphs=graphs)

    def describe_unet(self) -> str:
        return f"engine {self._engine()}"

    def random_weights(self) -> bool:
        return False  # an engine does not say; its export report does

    def parity_runner(self) -> ParityRunner:
        if self.spec.engine is not None:
            raise InputError(f"--engine {self.spec.engine} is not used by check --backend tensorrt (it builds its "
                             "own engines from --artifacts unet.onnx: one per binary layer, and one that exposes "
                             "every layer's input); drop it")
        if self.spec.artifacts is None:
            raise ArtifactError("check --backend tensorrt needs --artifacts DIR (holding unet.onnx)")
        return TrtParityRunner(self.spec.artifacts, plugin_lib=self.spec.plugin_lib)


def layer_graph(model: Any, row: Dict[str, Any], shape: Tuple[int, ...], float_dtype: np.dtype) -> Any:
    """One binary layer of ``model`` (an exported unet.onnx) as a graph of its own, its input given the
    concrete ``shape`` (TensorRT needs every input's rank): exactly the nodes and initializers the
    artifact holds between the layer's input and output tensors."""
    import onnx
    from onnx import helper

    from ..onnxruntime import cut_subgraph

    sub = cut_subgraph(model, row["input"], row["output"])
    elem = onnx.TensorProto.FLOAT16 if np.dtype(float_dtype) == np.float16 else onnx.TensorProto.FLOAT
    sub.graph.input[0].CopyFrom(helper.make_tensor_value_info(row["input"], elem, list(shape)))
    return sub


def exposed_unet_graph(model: Any, table: List[Dict[str, Any]], float_dtype: np.dtype) -> Any:
    """``model`` with the input tensor of every binary layer marked as a graph output too."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    elem = onnx.TensorProto.FLOAT16 if np.dtype(float_dtype) == np.float16 else onnx.TensorProto.FLOAT
    for row in table:
        if row["input"] not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(row["input"], elem, None))
            have.add(row["input"])
    return m


class TrtParityRunner(ParityRunner):
    """TensorRT for ``check``, on engines built from the export's ``unet.onnx`` (the bimaco plugin):
    level 1 runs each binary layer as an engine of its own, cut out of the graph exactly as the
    artifact holds it; levels 2 and 3 run the whole UNet with every binary layer's input marked
    as an output (so flips can be found). Engines are built for the shapes they are fed (one
    profile each) and kept for the run in a temporary folder."""

    def __init__(self, artifacts: PathLike, *, plugin_lib: Optional[PathLike] = None):
        import onnx

        from ..onnxruntime import binary_layer_table

        trt = trt_builder.import_tensorrt()  # fails here, naming what to install, on machines without it
        import_cudart()
        path = Path(artifacts)
        path = path / UNET_FILE if path.is_dir() else path
        if not path.is_file():
            raise ArtifactError(f"{path}: not found (run `bimaco-deploy export` first)")
        self.path = path
        self.plugin_lib = plugin_lib
        self._model = onnx.load(str(path))
        self.metadata = {p.key: p.value for p in self._model.metadata_props}
        if self.metadata.get("graph_form") not in (None, "custom"):
            raise ArtifactError(f"{path}: holds no bimaco nodes; TensorRT checks run on unet.onnx")
        self.source = str(path)
        self.table = binary_layer_table(self.metadata)
        self.layer_names = [row["name"] for row in self.table]
        self.layer_ranks = {row["name"]: int(row["rank"]) for row in self.table}
        self.float_dtype = np.dtype(self.metadata.get("float_dtype", "float32"))
        self.description = f"tensorrt {getattr(trt, '__version__', '?')}: engines built from {path}"
        self._tmp = tempfile.TemporaryDirectory(prefix="bimaco-trt-check-")
        self._engines: Dict[Any, TrtUNet] = {}

    def _engine(self, key: Any, model: Any, shapes: Dict[str, Tuple[int, ...]]) -> TrtUNet:
        import onnx

        if key not in self._engines:
            base = Path(self._tmp.name) / f"g{len(self._engines)}"
            onnx.save(model, str(base.with_suffix(".onnx")))
            profile = {n: trt_builder.ShapeRange(tuple(s), tuple(s), tuple(s)) for n, s in shapes.items()}
            trt_builder.build_from_onnx(base.with_suffix(".onnx"), base.with_suffix(".plan"), profile,
                                        onnx_dtype=str(self.float_dtype), plugin_lib=self.plugin_lib)
            self._engines[key] = TrtUNet(base.with_suffix(".plan"), plugin_lib=self.plugin_lib)
        return self._engines[key]

    def run_layer(self, name: str, x: np.ndarray) -> np.ndarray:
        row = next((r for r in self.table if r["name"] == name), None)
        if row is None:
            raise ArtifactError(f"layer '{name}' is not in the artifact's binary layer table")
        sub = layer_graph(self._model, row, x.shape, self.float_dtype)
        engine = self._engine(("layer", name, x.shape), sub, {row["input"]: x.shape})
        return engine.run({row["input"]: x.astype(self.float_dtype)})[row["output"]]

    def run_unet(self, x: np.ndarray, t: np.ndarray, lq: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        key = ("unet", x.shape, t.shape, lq.shape)
        if key not in self._engines:
            model = exposed_unet_graph(self._model, self.table, self.float_dtype)
            self._engine(key, model, {"x": x.shape, "timesteps": t.shape, "lq": lq.shape})
        outs = self._engines[key].run({"x": x, "timesteps": t, "lq": lq})
        return outs["out"].astype(np.float32), {row["name"]: outs[row["input"]] for row in self.table}

    def close(self) -> None:
        """Free the engines and remove their folder."""
        for e in self._engines.values():
            e.close()
        self._engines.clear()
        self._tmp.cleanup()
