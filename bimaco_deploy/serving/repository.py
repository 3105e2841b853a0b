"""``bimaco-deploy triton-repo``: a Triton Inference Server model repository for the SR pipeline.

Three variants, differing only in how the three networks run (see :mod:`.names` for the models):

* ``tensorrt``: ``tensorrt_plan`` models from our engines (``--engines DIR``: ``unet.plan``,
  ``vq_encoder.plan``, ``vq_decoder.plan``); the ``bimaco`` plugin library is copied into the
  repository and named in the launch command (``--backend-config=tensorrt,plugins=...``);
* ``onnxruntime``: ``onnxruntime_onnx`` models from the export's portable graphs, on CPU or
  CUDA instance groups;
* ``python``: Python-backend models on our own CPU runtimes (``runtime="torch"``: the packed
  1-bit UNet on our kernels and the torch autoencoder; ``runtime="onnxruntime"``: the
  export's graphs in ONNX Runtime), the variant the ``tritonserver`` that ``nvidia-pytriton``
  bundles can run (it has the Python backend only).

Every variant has the same Python-backend stages around the networks (preprocess, to_unet,
from_unet, postprocess), the ensemble ``bimacosr`` and the tiling BLS model ``bimacosr_tiled``;
the stages run the pipeline's own code (:mod:`.stages`). Input/output names, types and
shapes of the networks are read from the exported ONNX graphs, so the configs match what the
engines and files hold. The repository is written beside its destination under a temporary
name and renamed at the end: a failure never leaves half a repository.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..backends import resolve_config
from ..errors import ArtifactError, ConfigError, InputError
from ..export.artifacts import (
    PORTABLE_FILE,
    UNET_FILE,
    VQ_DECODER_FILE,
    VQ_ENCODER_FILE,
)
from ..models.config import ModelConfig
from . import names as N
from .pbtxt import Enum, render

PathLike = Union[str, Path]

BACKENDS = ("tensorrt", "onnxruntime", "python")
RUNTIMES = ("torch", "onnxruntime")  # what the Python-backend networks run on
#: Engine files ``--engines DIR`` must hold for the tensorrt variant (one per network).
ENGINE_FILES = {N.VQ_ENCODER: "vq_encoder.plan", N.UNET: "unet.plan", N.VQ_DECODER: "vq_decoder.plan"}
#: The exported ONNX graph each network's IO is read from, per variant (tensorrt engines are
#: built from unet.onnx, the custom-node graph; ONNX Runtime runs the portable twin).
ONNX_FILES = {
    "tensorrt": {N.VQ_ENCODER: VQ_ENCODER_FILE, N.UNET: UNET_FILE, N.VQ_DECODER: VQ_DECODER_FILE},
    "onnxruntime": {N.VQ_ENCODER: VQ_ENCODER_FILE, N.UNET: PORTABLE_FILE, N.VQ_DECODER: VQ_DECODER_FILE},
}
CONFIG_FILE = "bimacosr.yaml"  # the model config, beside each Python stage's model.py
PLUGIN_FILE = "libbimaco_trt_plugin.so"
README_FILE = "README.txt"
#: NGC's Triton container of the same release as nvidia-pytriton's bundled server (2.51).
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
NGC_TRT_IMAGE = "nvcr.io/nvidia/tensorrt:24.10-py3"  # the same release's TensorRT (10.5), with trtexec
_MODEL_PY = Path(__file__).with_name("triton_model.py")

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: dims without the batch axis (-1: any extent)."""

    name: str
    dtype: str  # numpy name: float32, float16, int64, uint8
    dims: Tuple[int, ...]
    reshape: Optional[Tuple[int, ...]] = None  # the model's own shape when it differs (timesteps: [N])
    optional: bool = False

    def config(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "data_type": Enum(TRITON_TYPES[self.dtype]), "dims": list(self.dims)}
        if self.reshape is not None:
            d["reshape"] = {"shape": list(self.reshape)}
        if self.optional:
            d["optional"] = True
        return d


@dataclass
class NetworkIO:
    """The inputs and outputs of one network, in the order of its graph."""

    inputs: List[TensorSpec]
    outputs: List[TensorSpec]

    def get(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise ArtifactError(f"the network has no tensor '{name}' (has {[t.name for t in self.inputs + self.outputs]})")


def onnx_io(path: PathLike) -> NetworkIO:
    """IO specs of an exported graph: axis 0 is the batch (Triton's ``max_batch_size``); a
    batch-only input such as ``timesteps [N]`` becomes dims [1] reshaped to [] for the model."""
    import onnx
    from onnx import helper

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: not found (run `bimaco-deploy export` first)")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:
        raise ArtifactError(f"{path}: not a readable ONNX model: {err}") from err
    inits = {t.name for t in graph.initializer}

    def spec(v: Any) -> TensorSpec:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if not dims or dims[0] not in (-1,):
            raise ArtifactError(f"{path}: tensor '{v.name}' has shape {dims}; the first axis must be the dynamic batch")
        dtype = str(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype not in TRITON_TYPES:
            raise ArtifactError(f"{path}: tensor '{v.name}' has element type {dtype}, which the repository does not map")
        rest = tuple(dims[1:])
        return TensorSpec(v.name, dtype, (1,), reshape=()) if not rest else TensorSpec(v.name, dtype, rest)

    return NetworkIO([spec(v) for v in graph.input if v.name not in inits], [spec(v) for v in graph.output])


def onnx_config_yaml(path: PathLike) -> str:
    """The model config the exporter stored in a graph's metadata (``config_yaml``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "config_yaml" not in meta:
        raise ArtifactError(f"{path}: holds no config_yaml metadata (exported by an older version?); pass --config")
    return meta["config_yaml"]


def python_network_io(latent_dtype: str) -> Dict[str, NetworkIO]:
    """The networks' IO when the Python backend runs them: the ONNX graphs' names, float32 except
    the encoder's latent, which stays in the autoencoder's dtype (as in the pipeline)."""
    img = (3, -1, -1)
    lat = (-1, -1, -1)
    return {
        N.VQ_ENCODER: NetworkIO([TensorSpec(N.IMAGE, "float32", img)], [TensorSpec(N.LATENT, latent_dtype, lat)]),
        N.UNET: NetworkIO(
            [TensorSpec(N.X, "float32", lat), TensorSpec(N.TIMESTEPS, "int64", (1,)), TensorSpec(N.LQ, "float32", img)],
            [TensorSpec(N.OUT, "float32", lat)],
        ),
        N.VQ_DECODER: NetworkIO([TensorSpec(N.LATENT, "float32", lat)], [TensorSpec(N.IMAGE, "float32", img)]),
    }


@dataclass
class RepositoryResult:
    """What :func:`write_repository` wrote."""

    path: Path
    backend: str
    models: List[str]
    command: List[str]  # the tritonserver command line (inside NGC's container for tensorrt/onnxruntime)
    files: Dict[str, Path] = field(default_factory=dict)


def _check_options(backend: str, runtime: str, max_batch: int, instances: int, device: str, tile: int,
                   max_size: int) -> None:
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if max_batch < 1:
        raise InputError(f"--max-batch must be at least 1, got {max_batch}")
    if instances < 1:
        raise InputError(f"--instances must be at least 1, got {instances}")
    if device not in ("cpu", "gpu"):
        raise InputError(f"--device must be cpu or gpu, got {device!r}")
    if tile < 1 or max_size < 1:
        raise InputError(f"--tile and --max-size must be positive, got {tile} and {max_size}")


def _place(src: Path, dst: Path) -> None:
    """A file into the repository: a hard link where possible (checkpoints are large), else a copy."""
    if not src.is_file():
        raise ArtifactError(f"{src}: not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _parameters(values: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items() if v is not None]


def _batching(queue_delay_us: int) -> Dict[str, Any]:
    return {"max_queue_delay_microseconds": int(queue_delay_us)}


def _python_model(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], max_batch: int,
                  instances: int, params: Dict[str, Any], queue_delay_us: int) -> Dict[str, Any]:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch,
        "input": [t.config() for t in inputs],
        "output": [t.config() for t in outputs],
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": instances}],
        "dynamic_batching": _batching(queue_delay_us),
        "parameters": _parameters({"stage": name, **params}),
    }


def _network_model(name: str, backend: str, io: NetworkIO, max_batch: int, instances: int, device: str,
                   params: Dict[str, Any], queue_delay_us: int) -> Dict[str, Any]:
    if backend == "python":
        return _python_model(name, io.inputs, io.outputs, max_batch, instances, params, queue_delay_us)
    cfg: Dict[str, Any] = {"name": name}
    if backend == "tensorrt":
        cfg.update(platform="tensorrt_plan", default_model_filename="model.plan")
        kind = "KIND_GPU"
    else:
        cfg.update(platform="onnxruntime_onnx", default_model_filename="model.onnx")
        kind = "KIND_GPU" if device == "gpu" else "KIND_CPU"
    cfg.update(
        max_batch_size=max_batch,
        input=[t.config() for t in io.inputs],
        output=[t.config() for t in io.outputs],
        instance_group=[{"kind": Enum(kind), "count": instances}],
        dynamic_batching=_batching(queue_delay_us),
    )
    return cfg


def _step(model: str, inputs: Dict[str, str], outputs: Dict[str, str]) -> Dict[str, Any]:
    """One ensemble step: model tensor name -> ensemble tensor name, both ways."""
    return {
        "model_name": model,
        "model_version": -1,
        "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
        "output_map": [{"key": k, "value": v} for k, v in outputs.items()],
    }


def build_configs(
    backend: str,
    nets: Dict[str, NetworkIO],
    *,
    max_batch: int = 4,
    instances: int = 1,
    device: str = "gpu",
    stage_params: Optional[Dict[str, Dict[str, Any]]] = None,
    queue_delay_us: int = 1000,
) -> Dict[str, Dict[str, Any]]:
    """Every model's config (as a message dict for :func:`~.pbtxt.render`), keyed by model name.

    ``nets``: the IO of the three networks (:func:`onnx_io` or :func:`python_network_io`);
    the stages around them take the dtypes the networks use (a float16 UNet gets float16 x
    and lq, an autoencoder kept in float16 hands its latent on as float16).
    """
    p = stage_params or {}
    enc, unet, dec = nets[N.VQ_ENCODER], nets[N.UNET], nets[N.VQ_DECODER]
    unet_dtype = unet.get(N.X).dtype
    lat_dtype = enc.get(N.LATENT).dtype
    img = (3, -1, -1)
    any3 = (-1, -1, -1)
    lr = TensorSpec(N.LR, "uint8", (-1, -1, 3))
    seed = TensorSpec(N.SEED, "int64", (1,), optional=True)
    tidx = TensorSpec(N.TILE_INDEX, "int64", (1,), optional=True)
    sr = TensorSpec(N.SR, "uint8", (-1, -1, 3))
    sr_signed = TensorSpec(N.SR_SIGNED, "float32", img)
    lr_hw = TensorSpec(N.LR_HW, "int64", (2,))
    noise = TensorSpec(N.NOISE, "float32", any3)
    common = dict(max_batch=max_batch, instances=instances, queue_delay_us=queue_delay_us)

    def py(name: str, ins: Sequence[TensorSpec], outs: Sequence[TensorSpec], **extra: Any) -> Dict[str, Any]:
        return _python_model(name, ins, outs, params={**p.get(name, {}), **extra}, **common)

    cfgs = {
        N.PREPROCESS: py(N.PREPROCESS, [lr, seed, tidx],
                         [TensorSpec(N.IMAGE, "float32", img), TensorSpec(N.LQ, unet_dtype, img), noise, lr_hw],
                         unet_dtype=unet_dtype),
        N.TO_UNET: py(N.TO_UNET, [TensorSpec(N.LATENT, lat_dtype, any3), noise],
                      [TensorSpec(N.X, unet_dtype, any3), TensorSpec(N.TIMESTEPS, "int64", (1,))], unet_dtype=unet_dtype),
        N.FROM_UNET: py(N.FROM_UNET, [TensorSpec(N.OUT, unet.get(N.OUT).dtype, any3)],
                        [TensorSpec(N.LATENT, dec.get(N.LATENT).dtype, any3)]),
        N.POSTPROCESS: py(N.POSTPROCESS, [TensorSpec(N.DECODED, dec.get(N.IMAGE).dtype, img), lr_hw], [sr, sr_signed]),
        N.TILED: py(N.TILED, [lr, seed], [sr]),
    }
    # the tiler only waits on the ensemble (one blocking BLS call per tile): with one instance it
    # would take images one at a time, so it gets an instance per image a batch may hold
    cfgs[N.TILED]["instance_group"] = [{"kind": Enum("KIND_CPU"), "count": max(instances, max_batch)}]
    for name in N.NETWORKS:
        cfgs[name] = _network_model(name, backend, nets[name], max_batch, instances, device, {**p.get(name, {})},
                                    queue_delay_us)
    cfgs[N.ENSEMBLE] = {
        "name": N.ENSEMBLE,
        "platform": "ensemble",
        "max_batch_size": max_batch,
        "input": [lr.config(), seed.config(), tidx.config()],
        "output": [sr.config(), sr_signed.config()],
        "ensemble_scheduling": {"step": [
            _step(N.PREPROCESS, {N.LR: N.LR, N.SEED: N.SEED, N.TILE_INDEX: N.TILE_INDEX},
                  {N.IMAGE: "lr_upsampled", N.LQ: "lq", N.NOISE: "noise", N.LR_HW: "lr_hw"}),
            _step(N.VQ_ENCODER, {N.IMAGE: "lr_upsampled"}, {N.LATENT: "z_raw"}),
            _step(N.TO_UNET, {N.LATENT: "z_raw", N.NOISE: "noise"}, {N.X: "unet_x", N.TIMESTEPS: "unet_t"}),
            _step(N.UNET, {N.X: "unet_x", N.TIMESTEPS: "unet_t", N.LQ: "lq"}, {N.OUT: "unet_out"}),
            _step(N.FROM_UNET, {N.OUT: "unet_out"}, {N.LATENT: "z_decode"}),
            _step(N.VQ_DECODER, {N.LATENT: "z_decode"}, {N.IMAGE: "decoded"}),
            _step(N.POSTPROCESS, {N.DECODED: "decoded", N.LR_HW: "lr_hw"}, {N.SR: N.SR, N.SR_SIGNED: N.SR_SIGNED}),
        ]},
    }
    return {name: cfgs[name] for name in N.MODELS}


def _resolve_model_config(config: Optional[Union[PathLike, ModelConfig]], artifacts: Optional[Path]) -> Tuple[ModelConfig, str]:
    """The model config and its YAML text: ``config`` when given, else the one the export embedded."""
    if config is not None:
        cfg = resolve_config(config)
        return cfg, Path(cfg.source).read_text()
    if artifacts is None:
        raise ConfigError("the repository needs the model config: pass --config, or --artifacts of an export")
    graph = artifacts / PORTABLE_FILE if (artifacts / PORTABLE_FILE).is_file() else artifacts / UNET_FILE
    text = onnx_config_yaml(graph)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_FILE
        path.write_text(text)
        cfg = resolve_config(path)
    return replace(cfg, source=Path(f"{graph} (embedded config)")), text


def write_repository(
    out: PathLike,
    *,
    backend: str,
    artifacts: Optional[PathLike] = None,
    engines: Optional[PathLike] = None,
    plugin_lib: Optional[PathLike] = None,
    config: Optional[Union[PathLike, ModelConfig]] = None,
    runtime: str = "torch",
    ckpt: Optional[PathLike] = None,
    vq_ckpt: Optional[PathLike] = None,
    seed: int = 0,
    vq_dtype: Optional[str] = None,
    max_batch: int = 4,
    instances: int = 1,
    device: str = "gpu",
    tile: int = 256,
    stride: Optional[int] = None,
    max_size: int = 1024,
    force: bool = False,
    link_files: bool = True,
    queue_delay_us: int = 1000,
) -> RepositoryResult:
    """Write a Triton model repository to ``out`` (see the module docstring).

    ``backend`` tensorrt needs ``artifacts`` (the ONNX graphs the engines were built from) and
    ``engines``; onnxruntime needs ``artifacts``; python needs ``config`` (+ ``ckpt``,
    ``vq_ckpt``; None: seeded random weights) for ``runtime`` torch, or ``artifacts`` for
    ``runtime`` onnxruntime. ``vq_dtype`` (float16 | float32; None: the device
    default, float32 on a CPU) is the torch autoencoder's precision, as ``infer --vq-precision``. ``tile``/``stride``: the tiling of
    ``bimacosr_tiled``, whose images may be up to ``max_size`` LR pixels on a side; the
    ensemble takes one tile (at most ``tile`` on a side). ``link_files`` False refers to
    checkpoints and graphs by absolute path instead of placing them in the repository
    (``serve``'s temporary repositories).
    """
    from ..pipeline.tiling import plan_tiles

    _check_options(backend, runtime, max_batch, instances, device, tile, max_size)
    plan_tiles(1, 1, tile, stride)  # an invalid tiling fails before anything is written
    if vq_dtype not in (None, "float16", "float32"):
        raise InputError(f"--vq-dtype must be float16 or float32, got {vq_dtype!r}")
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out}: already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory")
    torch_runtime = backend == "python" and runtime == "torch"
    unused = {"--ckpt": ckpt is not None and not torch_runtime, "--vq-ckpt": vq_ckpt is not None and not torch_runtime,
              "--engines": engines is not None and backend != "tensorrt",
              "--plugin": plugin_lib is not None and backend != "tensorrt"}
    if any(unused.values()):  # refused rather than silently ignored
        raise InputError(f"{', '.join(k for k, v in unused.items() if v)} do not apply to --backend {backend}"
                         + (f" --runtime {runtime}" if backend == "python" else ""))
    art = Path(artifacts) if artifacts is not None else None
    uses_onnx_files = backend in ("tensorrt", "onnxruntime") or runtime == "onnxruntime"
    if uses_onnx_files and art is None:
        what = f"--backend {backend}" if backend != "python" else "--backend python --runtime onnxruntime"
        raise ArtifactError(f"{what} needs --artifacts DIR (written by `bimaco-deploy export`)")
    cfg, config_text = _resolve_model_config(config, art)
    if cfg.diffusion is None or cfg.autoencoder is None:
        raise ConfigError(f"{cfg.source}: the repository needs the 'diffusion' and 'autoencoder' sections")

    # the networks' IO, and the files they run from
    net_files: Dict[str, Dict[str, Path]] = {name: {} for name in N.NETWORKS}
    if backend == "python":
        if runtime == "torch":
            nets = python_network_io("float32")  # the autoencoder takes and gives float32 at any precision
            if ckpt is not None:
                net_files[N.UNET]["unet_ckpt"] = Path(ckpt)
            if vq_ckpt is not None:
                net_files[N.VQ_ENCODER]["vq_ckpt"] = net_files[N.VQ_DECODER]["vq_ckpt"] = Path(vq_ckpt)
        else:
            nets = python_network_io("float32")
            net_files[N.UNET]["artifacts"] = art / PORTABLE_FILE
            for name in (N.VQ_ENCODER, N.VQ_DECODER):
                net_files[name]["artifacts"] = art / VQ_ENCODER_FILE
                net_files[name]["artifacts_decoder"] = art / VQ_DECODER_FILE
    else:
        nets = {name: onnx_io(art / ONNX_FILES[backend][name]) for name in N.NETWORKS}
        for name in N.NETWORKS:
            if backend == "tensorrt":
                if engines is None:
                    raise ArtifactError("--backend tensorrt needs --engines DIR holding " + ", ".join(ENGINE_FILES.values()))
                net_files[name]["model"] = Path(engines) / ENGINE_FILES[name]
            else:
                net_files[name]["model"] = art / ONNX_FILES[backend][name]
    missing = [str(p) for files in net_files.values() for p in files.values() if not p.is_file()]
    if missing:
        hint = ""
        if backend == "tensorrt":
            hint = ("\nbuild the engines with the TensorRT of the serving container, e.g.\n  " +
                    "\n  ".join(shlex.join(c) for c in engine_build_commands(art, Path(engines), tile, max_batch)))
        raise ArtifactError("missing files: " + ", ".join(sorted(set(missing))) + hint)
    plugin: Optional[Path] = None
    if backend == "tensorrt":
        from ..backends.tensorrt.builder import find_plugin_library

        plugin = find_plugin_library(plugin_lib)
        if plugin is None or not plugin.is_file():
            raise ArtifactError(
                f"the TensorRT variant needs the plugin library {PLUGIN_FILE}: build it (see README, "
                "'Build the TensorRT plugin') or pass --plugin"
            )

    # per-model parameters of the Python stages
    common: Dict[str, Any] = {
        "config": CONFIG_FILE, "seed": seed, "vq_dtype": vq_dtype, "pad_multiple": 64,
    }
    params: Dict[str, Dict[str, Any]] = {name: dict(common) for name in N.MODELS}
    params[N.TILED].update(tile=tile, stride=stride, max_size=max_size)
    params[N.PREPROCESS].update(tile=tile)
    for name in N.NETWORKS:
        params[name]["runtime"] = runtime if backend == "python" else None

    cfgs = build_configs(backend, nets, max_batch=max_batch, instances=instances, device=device,
                         stage_params=params, queue_delay_us=queue_delay_us)
    command = tritonserver_command(backend, "/models")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    written: Dict[str, Path] = {}
    try:
        for name, cfg_msg in cfgs.items():
            mdir = tmp / name
            (mdir / "1").mkdir(parents=True)
            is_python = cfg_msg.get("backend") == "python"
            if is_python:
                shutil.copyfile(_MODEL_PY, mdir / "1" / "model.py")
                (mdir / "1" / CONFIG_FILE).write_text(config_text)
            files = net_files.get(name, {})
            extra_params: Dict[str, Any] = {}
            for key, src in files.items():
                if key == "model":
                    _place(src, mdir / "1" / cfg_msg["default_model_filename"])
                    written[f"{name}/1/{cfg_msg['default_model_filename']}"] = src
                    continue
                if not link_files:
                    extra_params[key] = str(src.resolve())
                    continue
                dst = mdir / "1" / src.name
                _place(src, dst)
                extra_params[key] = src.name
                written[f"{name}/1/{src.name}"] = src
            if is_python and extra_params:
                cfg_msg["parameters"] = cfg_msg["parameters"] + _parameters(extra_params)
            (mdir / "config.pbtxt").write_text(render(cfg_msg))
        if plugin is not None:
            shutil.copy2(plugin, tmp / PLUGIN_FILE)
            written[PLUGIN_FILE] = plugin
        (tmp / README_FILE).write_text(readme_text(backend, runtime, command, cfg, tile, max_size, max_batch,
                                                   instances, art, engines))
        backup = None
        if out.exists():
            backup = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out.rename(backup)
        tmp.rename(out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RepositoryResult(out, backend, list(cfgs), command, written)


def tritonserver_command(backend: str, repository: str) -> List[str]:
    """The ``tritonserver`` command line for a repository mounted at ``repository``."""
    cmd = ["tritonserver", f"--model-repository={repository}"]
    if backend == "tensorrt":
        cmd.append(f"--backend-config=tensorrt,plugins={repository}/{PLUGIN_FILE}")
    return cmd


def engine_build_commands(artifacts: Optional[Path], engines: Path, tile: int, max_batch: int) -> List[List[str]]:
    """``trtexec`` commands for the three engines, with profiles that cover one tile at up to
    ``max_batch`` images: the UNet sees the padded LR size, the encoder 4x that, the decoder
    the latent (the padded LR size)."""
    art = artifacts or Path("artifacts")
    side = -(-tile // 64) * 64  # tiles are padded to multiples of 64
    big = side * 4
    # channel counts from the graphs when they are at hand (3 for BiMaCoSR's VQ-f4 latent and lq)
    cx = clq = clat = 3
    if (art / UNET_FILE).is_file() and (art / VQ_DECODER_FILE).is_file():
        unet_io = onnx_io(art / UNET_FILE)
        cx, clq = unet_io.get(N.X).dims[0], unet_io.get(N.LQ).dims[0]
        clat = onnx_io(art / VQ_DECODER_FILE).get(N.LATENT).dims[0]

    def shapes(name: str, dims: str) -> str:
        return f"{name}:{dims}"

    unet = ["trtexec", f"--onnx={art / UNET_FILE}", f"--dynamicPlugins=build/trt/{PLUGIN_FILE}",
            "--minShapes=" + ",".join([shapes("x", f"1x{cx}x64x64"), shapes("timesteps", "1"),
                                       shapes("lq", f"1x{clq}x64x64")]),
            "--optShapes=" + ",".join([shapes("x", f"1x{cx}x{side}x{side}"), shapes("timesteps", "1"),
                                       shapes("lq", f"1x{clq}x{side}x{side}")]),
            "--maxShapes=" + ",".join([shapes("x", f"{max_batch}x{cx}x{side}x{side}"),
                                       shapes("timesteps", str(max_batch)), shapes("lq", f"{max_batch}x{clq}x{side}x{side}")]),
            f"--saveEngine={engines / ENGINE_FILES[N.UNET]}"]
    enc = ["trtexec", f"--onnx={art / VQ_ENCODER_FILE}", "--minShapes=image:1x3x256x256",
           f"--optShapes=image:1x3x{big}x{big}", f"--maxShapes=image:{max_batch}x3x{big}x{big}",
           f"--saveEngine={engines / ENGINE_FILES[N.VQ_ENCODER]}"]
    dec = ["trtexec", f"--onnx={art / VQ_DECODER_FILE}", f"--minShapes=latent:1x{clat}x64x64",
           f"--optShapes=latent:1x{clat}x{side}x{side}", f"--maxShapes=latent:{max_batch}x{clat}x{side}x{side}",
           f"--saveEngine={engines / ENGINE_FILES[N.VQ_DECODER]}"]
    return [unet, enc, dec]


def readme_text(backend: str, runtime: str, command: List[str], cfg: ModelConfig, tile: int, max_size: int,
                max_batch: int, instances: int, artifacts: Optional[Path], engines: Optional[PathLike]) -> str:
    """README.txt of a repository: what is in it and the exact commands that serve it."""
    lines = [
        "bimaco-deploy Triton model repository",
        "=" * 37,
        "",
        f"variant: {backend}" + (f" (networks on the Python backend, runtime {runtime})" if backend == "python" else ""),
        f"model config: {cfg.source} (copied beside each Python stage as {CONFIG_FILE})",
        f"max batch {max_batch}, {instances} instance(s) per model, tile {tile} LR px, tiled images up to {max_size} px",
        "",
        "Models",
        f"  {N.TILED:15s} LR UINT8 [H, W, 3] (+ SEED INT64 [1]) -> SR UINT8 [4H, 4W, 3], any size up to {max_size}",
        f"  {N.ENSEMBLE:15s} the ensemble for one tile (H, W <= {tile}); optional SEED and TILE_INDEX INT64 [1]",
        "  preprocess, vq_encoder, to_unet, unet, from_unet, vq_decoder, postprocess: its steps",
        "",
        "The Python stages import bimaco_deploy (and torch): the server's Python must have them.",
        "",
    ]
    if backend in ("tensorrt", "onnxruntime"):
        lines += [
            f"Serve on a GPU server with NVIDIA's Triton container ({NGC_IMAGE}, Triton 2.51):",
            "",
            "1. An image with this package in it (Dockerfile):",
            f"     FROM {NGC_IMAGE}",
            "     RUN pip install torch --index-url <PyTorch's CPU wheel index>   # the stages need torch only on CPU",
            "     COPY bimaco-deploy /src/bimaco-deploy",
            "     RUN pip install /src/bimaco-deploy",
            "   docker build -t bimaco-triton .",
            "",
            "2. Start the server (this folder mounted at /models):",
            "     docker run --gpus all --rm --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \\",
            "       -v \"$PWD\":/models bimaco-triton \\",
            "       " + shlex.join(command),
            "",
        ]
        if backend == "tensorrt":
            lines += [
                f"The plugin library is copied here as {PLUGIN_FILE}; the engines ({', '.join(ENGINE_FILES.values())})",
                "and the plugin must be built with the TensorRT of the serving release (10.5 in 24.10), e.g. in",
                f"{NGC_TRT_IMAGE}:",
                "",
            ]
            for c in engine_build_commands(artifacts, Path(engines) if engines else Path("engines"), tile, max_batch):
                lines.append("     " + shlex.join(c))
            lines.append("")
    else:
        lines += [
            "Serve it on this machine (CPU) with the tritonserver nvidia-pytriton bundles:",
            "     bimaco-deploy serve --repository <this folder> [--http-port 8000 --grpc-port 8001]",
            "",
            f"or in NVIDIA's Triton container ({NGC_IMAGE}) with bimaco-deploy installed (see the",
            "Dockerfile in the project README, 'Serve on Triton'):",
            "     " + shlex.join(command),
            "",
        ]
    lines += [
        "Client:",
        "     bimaco-deploy infer --server http://HOST:8000 INPUT OUTPUT [--seed S]",
        "",
    ]
    return "\n".join(lines)
