"""The ``onnxruntime`` backend: the portable graphs of an export (``unet_portable.onnx``,
``unet_float.onnx``, the VQ graphs) in ONNX Runtime.

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
from ..export import provenance
from ..export.artifacts import FLOAT_FILE, PORTABLE_FILE, VQ_DECODER_FILE, VQ_ENCODER_FILE
from .base import Backend, ParityRunner, UNetFn, VQGraphs, VQLike, register

PathLike = Union[str, Path]


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
                "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu"
            )
        return ["CPUExecutionProvider"]
    raise InputError(f"--device {device!r}: ONNX Runtime takes cpu, cuda or auto")


def make_session(model: Union[PathLike, bytes, Any], *, device: str = "auto", threads: Optional[int] = None,
                 disabled_optimizers: Sequence[str] = ()):
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
        if disabled_optimizers:
            return ort.InferenceSession(model, so, providers=providers_for(device), disabled_optimizers=list(disabled_optimizers))
        return ort.InferenceSession(model, so, providers=providers_for(device))
    except Exception as e:  # onnxruntime raises its own exception types
        if "bimaco" in str(e) or "BinaryConv2d" in str(e) or "BinaryLinear" in str(e):
            raise ArtifactError(
                "ONNX Runtime cannot run the custom-node graph (unet.onnx); use unet_portable.onnx"
            ) from e
        raise ArtifactError(f"ONNX Runtime could not load the model: {str(e).splitlines()[0][:300]}") from e


def shrinking_run_options() -> Any:
    """RunOptions that hand the CPU arena's memory back after each run.

    Without them a session keeps its arena at the high-water mark of its largest run, and the
    VQ encoder's and decoder's arenas add up to the UNet's peak: one 1200x900 photo in 256 px
    tiles held 20 GB of a 24 GB machine (INT8 autoencoder, published config). Measured on a
    512 px image: peak 2.66 -> 1.99 GB, memory after each run 2.66 -> 0.42 GB, same speed.
    """
    ro = _ort().RunOptions()
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ro


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
        self._run_options = shrinking_run_options()
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
        return self.session.run(["out", *extra_outputs], feeds, self._run_options)

    def __call__(self, x: Any, timesteps: Any, lq: Any):
        xa, as_torch = _to_numpy(x, self.float_dtype, "x")
        ta, _ = _to_numpy(timesteps, np.int64, "timesteps")
        la, _ = _to_numpy(lq, self.float_dtype, "lq")
        out = self.run(xa, ta, la)[0]
        return _like(out.astype(np.float32, copy=False), as_torch, x)


class OrtVQ:
    """The exported VQ autoencoder: ``encode(image) -> latent``, ``decode(latent) -> image`` (float32 IO).

    ``artifacts``: a folder holding ``vq_encoder.onnx`` and ``vq_decoder.onnx`` (an export, or
    the calibration cache). Their precision (fp32, fp16, int8) is read from the metadata;
    ``precision`` given means the caller needs that one, and anything else is an error.
    """

    def __init__(self, artifacts: PathLike, *, device: str = "auto", threads: Optional[int] = None,
                 precision: Optional[str] = None):
        from ..export.vq import graph_precision
        from ..export.vq_quant import QDQ_DISABLED_OPTIMIZERS

        self.encoder_path = _resolve(artifacts, VQ_ENCODER_FILE)
        self.decoder_path = _resolve(artifacts, VQ_DECODER_FILE)
        self.encoder = make_session(self.encoder_path, device=device, threads=threads,
                                    disabled_optimizers=QDQ_DISABLED_OPTIMIZERS)
        self.decoder = make_session(self.decoder_path, device=device, threads=threads,
                                    disabled_optimizers=QDQ_DISABLED_OPTIMIZERS)
        self.metadata = meta = model_metadata(self.encoder)
        self.downscale = int(meta.get("downscale", "4"))
        self.precision = graph_precision(meta)
        self._run_options = shrinking_run_options()
        self.folder = Path(artifacts)
        if precision is not None and precision != self.precision:
            raise ArtifactError(
                f"{self.folder}: the VQ graphs are {self.precision}, --vq-precision asks for {precision}; "
                f"re-export with `bimaco-deploy export --vq-precision {precision}`"
            )
        weights = provenance.describe_weights(meta) or "weights as exported"
        self.description = (f"ONNX graphs {self.encoder_path.name} + {self.decoder_path.name} from "
                            f"{self.encoder_path.parent} ({self.precision}, ONNX Runtime), {weights}")

    def encode(self, image: Any):
        arr, as_torch = _to_numpy(image, np.float32, "image")
        if arr.ndim != 4 or arr.shape[2] % self.downscale or arr.shape[3] % self.downscale:
            raise InputError(f"image has shape {arr.shape}; expected [N, 3, H, W] with H, W multiples of {self.downscale}")
        return _like(self.encoder.run(None, {"image": arr}, self._run_options)[0], as_torch, image)

    def decode(self, latent: Any):
        arr, as_torch = _to_numpy(latent, np.float32, "latent")
        if arr.ndim != 4:
            raise InputError(f"latent has shape {arr.shape}; expected [N, C, h, w]")
        return _like(self.decoder.run(None, {"latent": arr}, self._run_options)[0], as_torch, latent)

    def __repr__(self) -> str:
        return f"OrtVQ({self.precision}, {self.folder})"


def artifact_vq_precision(artifacts: Optional[PathLike]) -> Optional[str]:
    """The precision of the VQ graphs an export holds (None when it holds none)."""
    if artifacts is None:
        return None
    enc = Path(artifacts) / VQ_ENCODER_FILE
    if not enc.is_file() or not (Path(artifacts) / VQ_DECODER_FILE).is_file():
        return None
    import onnx

    from ..export.vq import graph_precision

    return graph_precision(onnx.load(str(enc), load_external_data=False))


def binary_layer_table(metadata: Dict[str, str]) -> List[Dict[str, Any]]:
    """The per-layer tensor names recorded by the exporter (name, input, output, rank)."""
    raw = metadata.get("binary_layers")
    if not raw:
        raise ArtifactError("the UNet artifact has no 'binary_layers' metadata (exported by an older version?)")
    return [dict(zip(("name", "input", "output", "rank"), row)) for row in json.loads(raw)]


class OrtParityRunner(ParityRunner):
    """ONNX Runtime on the artifact's ``unet_portable.onnx``: each binary layer is cut out of
    the graph exactly as the artifact holds it (side branches and shared tables included)."""

    def __init__(self, artifacts: PathLike, device: str = "cpu"):
        import onnx

        self.unet = OrtUNet(artifacts, device=device)
        self.device = device
        self.metadata = self.unet.metadata
        self.source = str(self.unet.path)
        self.description = f"onnxruntime: {self.unet.path} ({', '.join(self.unet.providers)})"
        self.table = binary_layer_table(self.unet.metadata)
        self.layer_names = [row["name"] for row in self.table]
        self.layer_ranks = {row["name"]: int(row["rank"]) for row in self.table}
        self.float_dtype = self.unet.float_dtype
        self._model = onnx.load(str(self.unet.path))
        self._layer_sessions: Dict[str, Any] = {}
        self._exposed: Any = None

    def run_layer(self, name: str, x: np.ndarray) -> np.ndarray:
        row = next((r for r in self.table if r["name"] == name), None)
        if row is None:
            raise ArtifactError(f"layer '{name}' is not in the artifact's binary layer table")
        if name not in self._layer_sessions:
            sub = cut_subgraph(self._model, row["input"], row["output"])
            self._layer_sessions[name] = (make_session(sub, device=self.device), row["input"])
        sess, inp = self._layer_sessions[name]
        return sess.run(None, {inp: x.astype(self.float_dtype)})[0]

    def run_unet(self, x: np.ndarray, t: np.ndarray, lq: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        import onnx

        if self._exposed is None:
            m = onnx.ModelProto()
            m.CopyFrom(self._model)
            have = {o.name for o in m.graph.output}
            for row in self.table:
                if row["input"] not in have:
                    ft = onnx.TensorProto.FLOAT16 if self.float_dtype == np.float16 else onnx.TensorProto.FLOAT
                    m.graph.output.append(onnx.helper.make_tensor_value_info(row["input"], ft, None))
                    have.add(row["input"])
            self._exposed = make_session(m, device=self.device)
        self.unet.check_inputs(x.shape, t.shape, lq.shape)
        names = [row["input"] for row in self.table]
        outs = self._exposed.run(
            ["out", *dict.fromkeys(names)],
            {"x": x.astype(self.float_dtype), "timesteps": t.astype(np.int64), "lq": lq.astype(self.float_dtype)},
        )
        by_tensor = dict(zip(dict.fromkeys(names), outs[1:]))
        return outs[0].astype(np.float32), {row["name"]: by_tensor[row["input"]] for row in self.table}


def cut_subgraph(model: Any, input_name: str, output_name: str) -> Any:
    """The part of ``model`` computing ``output_name`` from ``input_name`` (and initializers only).

    Used to run one binary layer of an exported artifact on its own, exactly as
    the artifact holds it (side branches and the shared SMB table included).
    """
    import onnx
    from onnx import helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    needed_nodes: List[Any] = []
    seen: set = set()
    stack = [output_name]
    used_inits: set = set()
    while stack:
        name = stack.pop()
        if name in seen or name == input_name or not name:
            continue
        seen.add(name)
        if name in inits:
            used_inits.add(name)
            continue
        node = producer.get(name)
        if node is None:
            raise ArtifactError(f"'{output_name}' depends on '{name}', which is neither '{input_name}' nor a constant")
        if id(node) not in {id(n) for n in needed_nodes}:
            needed_nodes.append(node)
        stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(g.node)}
    needed_nodes.sort(key=lambda n: order[id(n)])
    float_type = onnx.TensorProto.FLOAT16 if {p.key: p.value for p in model.metadata_props}.get("float_dtype") == "float16" \
        else onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        needed_nodes, "layer",
        [helper.make_tensor_value_info(input_name, float_type, None)],
        [helper.make_tensor_value_info(output_name, float_type, None)],
        initializer=[inits[n] for n in sorted(used_inits)],
    )
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _need_artifacts(artifacts: Optional[PathLike]) -> PathLike:
    if artifacts is None:
        raise ArtifactError("--backend onnxruntime needs --artifacts DIR (written by `bimaco-deploy export`)")
    return artifacts


@register
class OnnxRuntimeBackend(Backend):
    """The exported portable graphs in ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)."""

    name = "onnxruntime"
    description = "unet_portable.onnx of an export in ONNX Runtime (needs --artifacts)"
    uses = frozenset({"artifacts"})
    unused_because = {**Backend.unused_because,
                      "ckpt": "the UNet comes from --artifacts: its weights were fixed at export"}

    def check_device(self) -> None:
        providers_for(self.spec.device)  # a bad name, or CUDA without onnxruntime-gpu, fails here

    def _metadata(self) -> Tuple[Dict[str, str], Path]:
        path = _resolve(_need_artifacts(self.spec.artifacts), PORTABLE_FILE)
        return provenance.read_metadata(path), path

    def unet(self) -> UNetFn:
        unet = OrtUNet(_need_artifacts(self.spec.artifacts), device=self.spec.device, threads=self.spec.threads)
        provenance.check_contract(unet.metadata, unet.path)
        provenance.check_config(unet.metadata, unet.path, self.spec.config)
        return unet

    def describe_unet(self) -> str:
        meta, path = self._metadata()
        return f"{path.name} of {path.parent}, " + (provenance.describe_weights(meta) or "weights as exported")

    def random_weights(self) -> bool:
        meta, _ = self._metadata()
        return meta.get(provenance.WEIGHTS_KEY) == "random_init"

    def float_baseline(self) -> Tuple[UNetFn, str]:
        path = Path(_need_artifacts(self.spec.artifacts)) / FLOAT_FILE
        if not path.is_file():
            raise ArtifactError(
                f"{path} not found: the onnxruntime baseline is the float model exported the same way; "
                "re-export with `bimaco-deploy export --float-baseline ...`, or pass --no-baseline"
            )
        unet = OrtUNet(path, device=self.spec.device, threads=self.spec.threads)
        return unet, f"onnxruntime {FLOAT_FILE} ({', '.join(unet.providers)})"

    def vq_precisions(self) -> Tuple[str, ...]:
        # no bfloat16 convolution in ONNX Runtime's CPU provider; QDQ graphs are for the CPU provider
        cpu = providers_for(self.spec.device)[0] == "CPUExecutionProvider"
        return ("fp32", "fp16", "int8") if cpu else ("fp32", "fp16")

    def autoencoder(self, vq_ckpt: Optional[PathLike] = None, precision: Optional[str] = None, *,
                    graphs: Optional[VQGraphs] = None) -> VQLike:
        """The VQ graphs in ONNX Runtime: the export's when they are at ``precision`` and no
        checkpoint overrides them, else the ones ``graphs(precision)`` makes (the calibration cache)."""
        from ..models.precision import SlowPrecisionWarning, resolve_precision

        precision = resolve_precision(precision, self.spec.device)
        self.check_vq_precision(precision)
        art = self.spec.artifacts
        if precision == "fp16" and "CUDAExecutionProvider" not in providers_for(self.spec.device):
            import warnings

            warnings.warn("--vq-precision fp16 in ONNX Runtime on a CPU: the fp16 graphs run as float32 with casts "
                          "around every layer, slower than the fp32 graphs (the CPU default)", SlowPrecisionWarning,
                          stacklevel=2)
        have = artifact_vq_precision(art)
        if vq_ckpt is None and have == precision:
            vq = OrtVQ(art, device=self.spec.device, threads=self.spec.threads, precision=precision)
            provenance.check_contract(vq.metadata, vq.encoder_path)
            provenance.check_config(vq.metadata, vq.encoder_path, self.spec.config, parts=("autoencoder",))
            return vq
        if vq_ckpt is None and have is not None:
            # the export's graphs carry its weights: graphs at another precision need the checkpoint
            raise ArtifactError(
                f"{art} holds {have} VQ graphs, --vq-precision asks for {precision}: re-export with "
                f"`bimaco-deploy export --vq-precision {precision}`, or give the VQ checkpoint (--vq-ckpt) to make them"
            )
        if graphs is None:
            raise ArtifactError(
                f"--backend onnxruntime needs VQ graphs at {precision} and the artifacts hold none: export with "
                f"`bimaco-deploy export --vq-precision {precision}` (or run through the pipeline, which makes and caches them)"
            )
        return OrtVQ(graphs(precision), device=self.spec.device, threads=self.spec.threads, precision=precision)

    def parity_runner(self) -> ParityRunner:
        return OrtParityRunner(_need_artifacts(self.spec.artifacts), device=self.spec.device)
