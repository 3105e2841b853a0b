"""Build a TensorRT engine from an exported ``unet.onnx`` with the ``bimaco`` plugin.

The choices that do not need TensorRT are pure functions, tested on any machine:

* :func:`profile_shapes`: the one optimization profile (min/opt/max of every
  input) from the ONNX inputs, the requested H/W range and batch range, with H
  and W checked against the multiple the model needs (``UNetConfig.size_multiple``:
  Swin window partition and skip concatenation).
* :func:`precision_plan`: TensorRT 10.x builds fp16 from an fp32 ONNX with the
  FP16 builder flag; TensorRT 11 networks are always strongly typed (the flag is
  gone), so fp16 there needs an fp16-typed ONNX (``bimaco-deploy export --dtype fp16``).

:func:`build_engine` then does the TensorRT part: load the plugin library into
the registry (before parsing: the parser checks every node), parse the ONNX and
report every parser error, one profile, timing cache load/save, build, and an
atomic write of the engine.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ...errors import ArtifactError, BackendUnavailable, BimacoError, ConfigError, InputError
from ...export.artifacts import FLOAT_FILE, UNET_FILE
from ...plugins import contract
from ...reports import check_output, write_bytes_atomic

PathLike = Union[str, Path]
HW = Tuple[int, int]

PLUGIN_LIBRARY_NAME = "libbimaco_trt_plugin.so"
#: Where ``cmake -S plugins_cpp -B build/trt`` (docs/jetson.md) puts the plugin.
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PLUGIN_DIRS = (REPO_ROOT / "build" / "trt", Path("/usr/local/lib"))

TENSORRT_INSTALL_HINT = (
    "TensorRT >= 10.3 with its Python bindings: on Jetson, JetPack 6 ships it (`sudo apt install "
    "python3-libnvinfer`); on a desktop, `pip install tensorrt` (NVIDIA's wheels) or the tar/deb packages"
)


# --------------------------------------------------------------------------- inputs and profiles


@dataclass(frozen=True)
class OnnxInput:
    """One graph input: its name, dims (int for a fixed extent, str for a named dynamic one) and element type."""

    name: str
    dims: Tuple[Union[int, str], ...]
    dtype: str  # numpy-style name: float32, float16, int64, ...


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max of one input in the optimization profile."""

    min: Tuple[int, ...]
    opt: Tuple[int, ...]
    max: Tuple[int, ...]


def parse_hw(text: Union[str, int, Sequence[int]]) -> HW:
    """``"64"`` -> (64, 64); ``"64x96"`` -> (64, 96) (H x W); a pair or an int passes through."""
    if isinstance(text, int):
        return (text, text)
    if not isinstance(text, str):
        h, w = text
        return (int(h), int(w))
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not m:
        raise InputError(f"size {text!r} is not H or HxW (for example 256 or 192x256)")
    h = int(m.group(1))
    return (h, int(m.group(2)) if m.group(2) else h)


def parse_batch(batch: Union[int, str, Sequence[int]]) -> Tuple[int, int, int]:
    """Batch range: ``1`` -> (1, 1, 1); ``"1:4"`` -> (1, 4, 4) (opt = max); ``"1:2:4"`` -> (1, 2, 4)."""
    if isinstance(batch, int):
        values = [batch]
    elif isinstance(batch, str):
        try:
            values = [int(v) for v in batch.split(":")]
        except ValueError:
            raise InputError(f"batch {batch!r} is not N, MIN:MAX or MIN:OPT:MAX") from None
    else:
        values = [int(v) for v in batch]
    if len(values) == 1:
        values = values * 3
    elif len(values) == 2:
        values = [values[0], values[1], values[1]]
    if len(values) != 3 or not (1 <= values[0] <= values[1] <= values[2]):
        raise InputError(f"batch range {batch!r} must satisfy 1 <= min <= opt <= max")
    return (values[0], values[1], values[2])


def check_hw(hw: HW, multiple: int, what: str) -> HW:
    """Raise InputError unless both sides are positive multiples of ``multiple``."""
    h, w = hw
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        lo = max(multiple, (max(h, 1) // multiple) * multiple)
        raise InputError(
            f"{what} size {h}x{w} is not allowed: H and W must be positive multiples of {multiple} "
            f"(the model's window/skip multiple), for example {lo}x{lo} or {lo + multiple}x{lo + multiple}"
        )
    return hw


def profile_shapes(
    inputs: Sequence[OnnxInput],
    *,
    multiple: int,
    min_hw: HW,
    opt_hw: HW,
    max_hw: HW,
    batch: Tuple[int, int, int] = (1, 1, 1),
) -> Dict[str, ShapeRange]:
    """The optimization profile: min/opt/max per input.

    Dynamic axis 0 is the batch; dynamic axes 2 and 3 of a 4-D input are H and W;
    fixed extents stay fixed. Any other dynamic axis is an error (the exported
    UNet has none).
    """
    for what, hw in (("min", min_hw), ("opt", opt_hw), ("max", max_hw)):
        check_hw(hw, multiple, what)
    if not (min_hw[0] <= opt_hw[0] <= max_hw[0] and min_hw[1] <= opt_hw[1] <= max_hw[1]):
        raise InputError(
            f"profile sizes must satisfy min <= opt <= max per side, got min {min_hw[0]}x{min_hw[1]}, "
            f"opt {opt_hw[0]}x{opt_hw[1]}, max {max_hw[0]}x{max_hw[1]}"
        )
    out: Dict[str, ShapeRange] = {}
    for inp in inputs:
        shapes: List[List[int]] = [[], [], []]
        for axis, d in enumerate(inp.dims):
            if isinstance(d, int) and d > 0:
                picks = (d, d, d)
            elif axis == 0:
                picks = batch
            elif len(inp.dims) == 4 and axis in (2, 3):
                i = axis - 2
                picks = (min_hw[i], opt_hw[i], max_hw[i])
            else:
                raise ArtifactError(
                    f"input '{inp.name}' has a dynamic axis {axis} ({d!r}) that is neither batch nor H/W; "
                    f"dims {list(inp.dims)}"
                )
            for k in range(3):
                shapes[k].append(int(picks[k]))
        out[inp.name] = ShapeRange(tuple(shapes[0]), tuple(shapes[1]), tuple(shapes[2]))
    return out


# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class PrecisionPlan:
    """How the network is created and configured for the requested precision."""

    trt_major: int
    strongly_typed: bool  # create the network with the STRONGLY_TYPED flag (10.x) / always (11+)
    fp16_flag: bool  # set BuilderFlag.FP16 (10.x weakly typed only)
    engine_dtype: str  # float16 or float32: the dtype the binary layers will see
    note: str


def trt_major_version(version: str) -> int:
    """``"10.3.0.30"`` -> 10."""
    m = re.match(r"\s*(\d+)", str(version))
    if not m:
        raise BackendUnavailable(f"cannot read the TensorRT version from {version!r}")
    return int(m.group(1))


def precision_plan(trt_version: str, fp16: bool, onnx_dtype: str) -> PrecisionPlan:
    """Precision settings for a TensorRT version, the ``--fp16`` request and the ONNX float type.

    * 10.x, fp32 ONNX: fp16 through BuilderFlag.FP16 (weakly typed network).
    * 10.x, fp16 ONNX: strongly typed, no flag (the ONNX already says fp16).
    * 11+: always strongly typed; fp16 needs an fp16 ONNX, fp32 ONNX builds fp32.
    """
    major = trt_major_version(trt_version)
    if major < 10:
        raise BackendUnavailable(
            f"TensorRT {trt_version} is too old: the bimaco plugin is an IPluginV3 (TensorRT >= 10.3). "
            f"Install {TENSORRT_INSTALL_HINT}."
        )
    if onnx_dtype not in ("float32", "float16"):
        raise ArtifactError(f"unet.onnx inputs are {onnx_dtype}; expected float32 or float16")
    if major >= 11:
        if fp16 and onnx_dtype != "float16":
            raise ArtifactError(
                f"TensorRT {trt_version} builds strongly typed networks only: precision comes from the ONNX, "
                "and this unet.onnx is float32. Re-export with `bimaco-deploy export --dtype fp16` for an fp16 "
                "engine, or build without --fp16."
            )
        note = "strongly typed (TensorRT 11+): precision as exported"
        return PrecisionPlan(major, True, False, onnx_dtype, note)
    if onnx_dtype == "float16":
        note = "strongly typed: the ONNX is float16" + ("" if fp16 else " (built fp16 although --fp16 was not given)")
        return PrecisionPlan(major, True, False, "float16", note)
    if fp16:
        return PrecisionPlan(major, False, True, "float16", "BuilderFlag.FP16 on a float32 ONNX")
    return PrecisionPlan(major, False, False, "float32", "float32")


# --------------------------------------------------------------------------- reading the artifact

_ONNX_DTYPES = {1: "float32", 10: "float16", 6: "int32", 7: "int64", 11: "float64"}


def read_onnx_inputs(model: Any) -> List[OnnxInput]:
    """Graph inputs (initializers excluded) of an ``onnx.ModelProto``."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: List[Union[int, str]] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "?")
        out.append(OnnxInput(vi.name, tuple(dims), _ONNX_DTYPES.get(tt.elem_type, f"onnx type {tt.elem_type}")))
    return out


def onnx_float_dtype(inputs: Sequence[OnnxInput]) -> str:
    """The float type of the model's float inputs (they must agree)."""
    kinds = {i.dtype for i in inputs if i.dtype.startswith("float")}
    if len(kinds) != 1:
        raise ArtifactError(f"unet.onnx float inputs must share one dtype, got {sorted(kinds) or 'none'}")
    return kinds.pop()


def model_size_multiple(model: Any, artifacts_dir: Path) -> int:
    """H/W multiple of the exported model, from the config YAML in the ONNX metadata (or config.yaml beside it)."""
    from ...models.config import load_config

    meta = {p.key: p.value for p in model.metadata_props}
    text = next((meta[k] for k in ("config", "config_yaml", "bimaco.config") if k in meta), None)
    if text is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(text)
            try:
                return load_config(path).unet.size_multiple
            except ConfigError as err:
                raise ArtifactError(f"{artifacts_dir / 'unet.onnx'}: the config in its metadata is invalid: {err}")
    side = artifacts_dir / "config.yaml"
    if side.is_file():
        return load_config(side).unet.size_multiple
    raise ArtifactError(
        f"{artifacts_dir / 'unet.onnx'} has no 'config' metadata and there is no config.yaml beside it: "
        "cannot tell which H/W the model accepts. Re-export with `bimaco-deploy export`."
    )


def count_custom_nodes(model: Any) -> Dict[str, int]:
    """Number of ``bimaco`` nodes per op type."""
    counts: Dict[str, int] = {}
    for n in model.graph.node:
        if n.domain == contract.DOMAIN:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


# --------------------------------------------------------------------------- plugin library and TensorRT


def find_plugin_library(explicit: Optional[PathLike] = None) -> Optional[Path]:
    """The plugin library: ``explicit``, else ``$BIMACO_TRT_PLUGIN``, else the default build dirs."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("BIMACO_TRT_PLUGIN")
    if env:
        return Path(env)
    for d in DEFAULT_PLUGIN_DIRS:
        p = d / PLUGIN_LIBRARY_NAME
        if p.is_file():
            return p
    return None


def import_tensorrt() -> Any:
    """``import tensorrt`` or BackendUnavailable saying what to install."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError as err:
        raise BackendUnavailable(f"TensorRT is not importable ({err}). Install {TENSORRT_INSTALL_HINT}.") from None
    except OSError as err:  # the bindings exist but libnvinfer does not load
        raise BackendUnavailable(f"TensorRT is installed but does not load ({err}). Reinstall {TENSORRT_INSTALL_HINT}.")
    if not hasattr(tensorrt, "Builder"):
        # A directory named "tensorrt" on sys.path (e.g. a test folder) imports as an empty namespace package.
        where = list(getattr(tensorrt, "__path__", []))
        raise BackendUnavailable(f"TensorRT is not installed ('import tensorrt' found only {where}). "
                                 f"Install {TENSORRT_INSTALL_HINT}.")
    return tensorrt


def load_plugin_library(trt: Any, registry: Any, explicit: Optional[PathLike] = None) -> Path:
    """Load the bimaco plugin library into ``registry`` (IPluginRegistry.load_library) and check its creators."""
    lib = find_plugin_library(explicit)
    if lib is None or not lib.is_file():
        where = str(lib) if lib is not None else ", ".join(str(d / PLUGIN_LIBRARY_NAME) for d in DEFAULT_PLUGIN_DIRS)
        raise BackendUnavailable(
            f"the TensorRT plugin library was not found ({where}). Build it with "
            "`cmake -S plugins_cpp -B build/trt -DCMAKE_BUILD_TYPE=Release && cmake --build build/trt -j`, "
            "or pass --plugin / set $BIMACO_TRT_PLUGIN."
        )
    have = [contract.CONV_OP, contract.LINEAR_OP]
    already = all(
        registry.get_creator(op, contract.PLUGIN_VERSION, contract.PLUGIN_NAMESPACE) is not None for op in have
    )
    if not already:
        handle = registry.load_library(str(lib))
        if handle is None:
            raise BackendUnavailable(f"TensorRT could not load the plugin library {lib}; see the TensorRT log above")
    for op in have:
        if registry.get_creator(op, contract.PLUGIN_VERSION, contract.PLUGIN_NAMESPACE) is None:
            raise BackendUnavailable(
                f"{lib} is loaded but registers no {contract.PLUGIN_NAMESPACE}::{op} v{contract.PLUGIN_VERSION}"
            )
    return lib


def _parser_errors(parser: Any) -> List[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = []
        for attr in ("node_name", "node_operator", "node"):
            fn = getattr(e, attr, None)
            if fn is None:
                continue
            try:
                v = fn()
            except Exception:  # older bindings lack some accessors
                continue
            if v not in (None, "", -1):
                where.append(f"{attr}={v}")
        out.append(f"{e.desc()}" + (f" ({', '.join(where)})" if where else ""))
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    # one atomic writer for every output: temp file, fsync, the user's permissions, rename
    write_bytes_atomic(path, data)


def build_engine(
    artifacts_dir: PathLike,
    out: PathLike,
    *,
    fp16: bool = False,
    min_hw: Union[str, HW] = (64, 64),
    opt_hw: Union[str, HW] = (256, 256),
    max_hw: Union[str, HW] = (256, 256),
    batch: Union[int, str, Sequence[int]] = 1,
    timing_cache: Optional[PathLike] = None,
    plugin_lib: Optional[PathLike] = None,
    workspace_mib: Optional[int] = None,
    onnx_name: str = UNET_FILE,
    float_baseline: Optional[bool] = None,
    force: bool = False,
) -> Dict[str, Any]:
    """Build ``out`` (a serialized TensorRT engine) from ``<artifacts_dir>/unet.onnx``.

    Sizes are the UNet input H x W (the padded LR size: the latent of a 4x model
    has the LR's size). Everything that can be checked without TensorRT (files,
    sizes, profile, precision) is checked first. When the directory holds
    ``unet_float.onnx`` (``export --float-baseline``; ``float_baseline`` None: if present,
    True: required, False: never), its engine is built the same way (same profile,
    precision and timing cache) beside ``out`` as ``<stem>_float<suffix>``: the baseline
    ``bench --backend tensorrt`` runs. Every engine path follows the output rule
    (:data:`~bimaco_deploy.reports.OUTPUT_RULE`: an existing engine is replaced only with ``force``),
    checked before anything is built. Returns a report dict.
    """
    artifacts = Path(artifacts_dir)
    jobs = engine_jobs(artifacts, out, onnx_name=onnx_name, float_baseline=float_baseline)
    for _, dst, _ in jobs:
        check_output(dst, option="--out", kind="file", force=force)
    plans = [(src, dst, _plan_build(src, artifacts, min_hw, opt_hw, max_hw, batch, custom)) for src, dst, custom in jobs]
    reports = []
    for src, dst, (profile, onnx_dtype, multiple, custom) in plans:
        report = build_from_onnx(
            src,
            dst,
            profile,
            fp16=fp16,
            onnx_dtype=onnx_dtype,
            timing_cache=timing_cache,
            plugin_lib=plugin_lib,
            workspace_mib=workspace_mib,
            needs_plugin=bool(custom),
        )
        report.update(size_multiple=multiple, custom_nodes=custom)
        reports.append(report)
    if len(reports) > 1:
        reports[0]["float_baseline"] = reports[1]
    return reports[0]


def float_engine_path(engine: PathLike) -> Path:
    """Where ``build`` puts the float baseline's engine beside ENGINE: unet.plan -> unet_float.plan."""
    p = Path(engine)
    return p.with_name(f"{p.stem}_float{p.suffix}")


def engine_jobs(
    artifacts: Path, out: PathLike, *, onnx_name: str = UNET_FILE, float_baseline: Optional[bool] = None
) -> List[Tuple[Path, Path, bool]]:
    """(ONNX file, engine file, needs bimaco nodes) for each engine :func:`build_engine` writes."""
    float_onnx = Path(artifacts) / FLOAT_FILE
    if float_baseline and not float_onnx.is_file():
        raise ArtifactError(f"{float_onnx} not found: export with --float-baseline to build the float baseline engine")
    jobs = [(Path(artifacts) / onnx_name, Path(out), True)]
    if float_baseline is not False and float_onnx.is_file():
        jobs.append((float_onnx, float_engine_path(out), False))
    return jobs


def _plan_build(
    onnx_path: Path,
    artifacts: Path,
    min_hw: Union[str, HW],
    opt_hw: Union[str, HW],
    max_hw: Union[str, HW],
    batch: Union[int, str, Sequence[int]],
    require_custom: bool,
) -> Tuple[Dict[str, ShapeRange], str, int, Dict[str, int]]:
    """Profile, float dtype, size multiple and custom-node counts of one ONNX file, checked."""
    import onnx

    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} not found: run `bimaco-deploy export` first")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:
        raise ArtifactError(f"{onnx_path}: not a readable ONNX model: {err}") from err
    custom = count_custom_nodes(model)
    if require_custom and not custom:
        raise ArtifactError(
            f"{onnx_path} has no {contract.DOMAIN} nodes: build the engine from unet.onnx, not the portable graph"
        )
    inputs = read_onnx_inputs(model)
    multiple = model_size_multiple(model, artifacts)
    profile = profile_shapes(
        inputs,
        multiple=multiple,
        min_hw=parse_hw(min_hw),
        opt_hw=parse_hw(opt_hw),
        max_hw=parse_hw(max_hw),
        batch=parse_batch(batch),
    )
    return profile, onnx_float_dtype(inputs), multiple, custom


def attach_timing_cache(config: Any, path: Optional[Path]) -> Any:
    """Load the timing cache at ``path`` (a fresh one when the file does not exist yet) and attach
    it to the builder config, before the build starts; returns the cache, which must outlive it.

    A file TensorRT cannot read (``create_timing_cache`` returns None) or one made on another
    GPU or TensorRT version (``set_timing_cache(..., ignore_mismatch=False)`` returns False) is
    an error naming the file, raised before minutes of building: replacing it would destroy
    another device's cache, and reusing a mismatched one can give wrong timings.
    """
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None:
        if blob:
            raise ArtifactError(
                f"{path}: not a TensorRT timing cache TensorRT can read (corrupt, or written by another "
                "TensorRT version); delete it or pass another --timing-cache file"
            )
        raise BackendUnavailable("TensorRT could not create an empty timing cache")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ArtifactError(
            f"{path}: the timing cache was made on another GPU or TensorRT version and does not fit this "
            "device; keep one cache per device and TensorRT version (pass another --timing-cache file)"
        )
    return cache


def save_timing_cache(config: Any, path: Path) -> None:
    """Write the builder's timing cache (what the build learned) atomically to ``path``."""
    cache = config.get_timing_cache()
    if cache is None:
        raise BimacoError(f"TensorRT returned no timing cache to save to {path} (the engine was written)")
    _atomic_write(path, bytes(cache.serialize()))


def build_from_onnx(
    onnx_path: PathLike,
    out: PathLike,
    profile: Dict[str, ShapeRange],
    *,
    fp16: bool = False,
    onnx_dtype: str = "float32",
    timing_cache: Optional[PathLike] = None,
    plugin_lib: Optional[PathLike] = None,
    workspace_mib: Optional[int] = None,
    needs_plugin: bool = True,
) -> Dict[str, Any]:
    """The TensorRT part of :func:`build_engine` for any ONNX with bimaco nodes (also single-layer
    graphs), or without them (``needs_plugin`` False: the float baseline).

    Loads the plugin library into the global registry (before parsing: the parser
    checks every node), parses reporting every parser error, adds the one profile,
    loads/saves the timing cache, builds, and writes the engine atomically.
    """
    onnx_path = Path(onnx_path)
    trt = import_tensorrt()
    plan = precision_plan(trt.__version__, fp16, onnx_dtype)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendUnavailable("TensorRT could not create a builder (no usable GPU or driver?)")
    # The global registry: the runtime that deserializes the engine later looks there too.
    lib = load_plugin_library(trt, trt.get_plugin_registry(), plugin_lib) if needs_plugin else None

    network, config, _prof = parse_and_configure(trt, builder, logger, onnx_path, profile,
                                                 strongly_typed=plan.strongly_typed and plan.trt_major == 10,
                                                 fp16=plan.fp16_flag, workspace_mib=workspace_mib)
    cache_path = Path(timing_cache) if timing_cache else None
    serialized, build_s = build_serialized(builder, network, config, onnx_path, cache_path)
    out_path = Path(out)
    _atomic_write(out_path, bytes(serialized))
    if cache_path is not None:
        save_timing_cache(config, cache_path)  # written after the engine: what the build learned
    return {
        "engine": str(out_path),
        "engine_bytes": out_path.stat().st_size,
        "onnx": str(onnx_path),
        "tensorrt": trt.__version__,
        "plugin_library": str(lib) if lib is not None else None,
        "precision": asdict(plan),
        "profile": {k: asdict(v) for k, v in profile.items()},
        "timing_cache": str(cache_path) if cache_path else None,
        "build_seconds": round(build_s, 2),
    }


def parse_and_configure(trt: Any, builder: Any, logger: Any, onnx_path: Path, profile: Dict[str, ShapeRange], *,
                        strongly_typed: bool = False, fp16: bool = False, int8: bool = False,
                        workspace_mib: Optional[int] = None) -> Tuple[Any, Any, Any]:
    """(network, builder config, optimization profile) for one ONNX file: parsed (every parser
    error reported), precision flags set, the one profile added. ``strongly_typed`` sets
    TensorRT 10's flag (TensorRT 11 networks are strongly typed without, and deprecate, it).
    Plugins the graph needs must be registered before this is called: the parser checks every node."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser)
        raise ArtifactError(
            f"TensorRT could not parse {onnx_path} ({len(errors)} error(s)):\n  " + "\n  ".join(errors)
        )
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    prof = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profile:
            raise ArtifactError(f"TensorRT network input '{name}' of {onnx_path} has no profile "
                                f"(the profile covers {', '.join(sorted(profile))})")
        r = profile[name]
        prof.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(prof)
    return network, config, prof


def build_serialized(builder: Any, network: Any, config: Any, onnx_path: Path,
                     cache_path: Optional[Path]) -> Tuple[bytes, float]:
    """Attach the timing cache (checked first: :func:`attach_timing_cache`), build, and return
    (the serialized engine, build seconds); a failed build is an error naming ``onnx_path``."""
    cache = attach_timing_cache(config, cache_path)  # noqa: F841  (must outlive the build)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BimacoError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    return bytes(serialized), time.perf_counter() - t0
