"""TensorRT engines of the VQ autoencoder (fp16, fp32, INT8) and the autoencoder that runs them.

``bimaco-deploy build --vq-precision P`` writes ``<engine>_vq_encoder_P.plan`` and
``<engine>_vq_decoder_P.plan`` beside the UNet engine, from the VQ graphs of the export:

* TensorRT 10.x (weakly typed networks): from the **float32** graphs, fp16 through
  ``BuilderFlag.FP16``; INT8 through ``BuilderFlag.INT8`` (+ FP16 for the layers left in
  float) and an entropy calibrator over the same calibration set as the ONNX Runtime graphs
  (``polygraphy.backend.trt.Calibrator``, with a calibration cache: a rebuild does not
  calibrate again). The decoder calibrates on the latents of our float32 encoder.
* TensorRT 11.x (always strongly typed, no implicit INT8): precision comes from the ONNX;
  fp16 from the fp16 graphs, INT8 from the INT8 QDQ graphs (``export --vq-precision int8``).

The choices are pure functions (:func:`vq_build_plan`, :func:`vq_profiles`,
:func:`vq_engine_paths`), tested on any machine; the TensorRT calls are a thin layer over
them, written against TensorRT 10.3 - 11.x and tested only where TensorRT and a GPU exist
(tests marked ``tensorrt``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import ArtifactError, BackendUnavailable, InputError
from ...export.artifacts import VQ_DECODER_FILE, VQ_ENCODER_FILE
from . import builder as trt_builder

PathLike = Union[str, Path]
#: Precisions TensorRT VQ engines are built in.
TRT_VQ_PRECISIONS = ("fp16", "fp32", "int8")


def vq_engine_paths(engine: PathLike, precision: str) -> Tuple[Path, Path]:
    """(encoder, decoder) engine files beside the UNet engine: unet.plan -> unet_vq_encoder_int8.plan, ..."""
    p = Path(engine)
    return (p.with_name(f"{p.stem}_vq_encoder_{precision}{p.suffix}"),
            p.with_name(f"{p.stem}_vq_decoder_{precision}{p.suffix}"))


@dataclass(frozen=True)
class VQBuildPlan:
    """How one VQ engine is built for a TensorRT version and precision."""

    trt_major: int
    graph_precision: str  # the precision of the ONNX graph it needs
    strongly_typed: bool
    fp16_flag: bool
    int8_flag: bool
    calibrator: bool  # implicit INT8: a calibrator supplies the activation ranges
    note: str


def vq_build_plan(trt_version: str, precision: str) -> VQBuildPlan:
    """The build settings for ``precision`` on TensorRT ``trt_version`` (see the module docstring)."""
    if precision not in TRT_VQ_PRECISIONS:
        raise InputError(f"--vq-precision {precision}: TensorRT VQ engines come in {', '.join(TRT_VQ_PRECISIONS)}")
    major = trt_builder.trt_major_version(trt_version)
    if major < 10:
        raise BackendUnavailable(f"TensorRT {trt_version} is too old: VQ engines are built with TensorRT >= 10.3")
    if major >= 11:
        return VQBuildPlan(major, precision, True, False, False, False,
                           f"strongly typed (TensorRT {major}): the ONNX graph is {precision}")
    if precision == "fp32":
        return VQBuildPlan(major, "fp32", False, False, False, False, "float32")
    if precision == "fp16":
        return VQBuildPlan(major, "fp32", False, True, False, False, "BuilderFlag.FP16 on the float32 graph")
    return VQBuildPlan(major, "fp32", False, True, True, True,
                       "BuilderFlag.INT8 + FP16 on the float32 graph, entropy calibration (polygraphy Calibrator)")


def vq_profiles(min_lr: Tuple[int, int], opt_lr: Tuple[int, int], max_lr: Tuple[int, int], *, sf: int = 4,
                downscale: int = 4, batch: Tuple[int, int, int] = (1, 1, 1)) -> Dict[str, Dict[str, Any]]:
    """Optimization profiles of the two engines from padded LR sizes (H, W): the encoder sees the
    image sf x LR, the decoder the latent (sf / downscale) x LR."""
    for hw in (min_lr, opt_lr, max_lr):
        if min(hw) <= 0:
            raise InputError(f"LR size {hw}: sides must be positive")
    if not (min_lr[0] <= opt_lr[0] <= max_lr[0] and min_lr[1] <= opt_lr[1] <= max_lr[1]):
        raise InputError(f"need min <= opt <= max, got {min_lr}, {opt_lr}, {max_lr}")

    def shapes(scale: int) -> Dict[str, Tuple[int, ...]]:
        return {k: (b, 3, hw[0] * scale, hw[1] * scale)
                for k, b, hw in (("min", batch[0], min_lr), ("opt", batch[1], opt_lr), ("max", batch[2], max_lr))}

    lat = sf // downscale
    if lat * downscale != sf:
        raise InputError(f"sf {sf} is not a multiple of the VQ downscale {downscale}")
    return {"encoder": {"image": shapes(sf)}, "decoder": {"latent": shapes(lat)}}


def check_vq_graph(path: Path, need: str) -> None:
    """Refuse a VQ graph of another precision than the plan needs, naming the export to make."""
    import onnx

    from ...export.vq import graph_precision

    if not path.is_file():
        raise ArtifactError(f"{path} not found: export the VQ graphs first (`bimaco-deploy export --vq-precision {need}`)")
    have = graph_precision(onnx.load(str(path), load_external_data=False))
    if have != need:
        raise ArtifactError(f"{path} is {have}; this TensorRT builds from {need} VQ graphs "
                            f"(`bimaco-deploy export --vq-precision {need}`)")


def _calibrator(feeds: Iterable[Dict[str, np.ndarray]], cache: Path) -> Any:
    try:
        from polygraphy.backend.trt import Calibrator  # type: ignore[import-not-found]
    except ImportError as err:
        raise BackendUnavailable(f"INT8 calibration on TensorRT 10.x needs polygraphy (pip install polygraphy): {err}")
    return Calibrator(data_loader=list(feeds), cache=str(cache))


def build_vq_engine(
    onnx_path: PathLike,
    out: PathLike,
    precision: str,
    profile: Dict[str, Dict[str, Tuple[int, ...]]],
    *,
    calibration: Optional[Sequence[Dict[str, np.ndarray]]] = None,
    calib_cache: Optional[PathLike] = None,
    timing_cache: Optional[PathLike] = None,
    workspace_mib: Optional[int] = None,
) -> Dict[str, Any]:
    """Build one VQ engine (encoder or decoder) from its ONNX graph; returns a report dict.

    ``calibration``: input feeds for implicit INT8 (TensorRT 10.x); ``calib_cache`` holds
    the ranges once computed (reused when present).
    """
    trt = trt_builder.import_tensorrt()
    plan = vq_build_plan(trt.__version__, precision)
    onnx_path = Path(onnx_path)
    check_vq_graph(onnx_path, plan.graph_precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendUnavailable("TensorRT could not create a builder (no usable GPU or driver?)")
    ranges = {name: trt_builder.ShapeRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for name, r in profile.items()}
    network, config, prof = trt_builder.parse_and_configure(
        trt, builder, logger, onnx_path, ranges, strongly_typed=plan.strongly_typed and plan.trt_major == 10,
        fp16=plan.fp16_flag, int8=plan.int8_flag, workspace_mib=workspace_mib)
    if plan.calibrator:
        cache = Path(calib_cache) if calib_cache else Path(out).with_suffix(".calib")
        if not calibration and not cache.is_file():
            raise InputError(f"INT8 on TensorRT {trt.__version__} needs calibration images (--calib DIR) or a cache {cache}")
        config.int8_calibrator = _calibrator(calibration or [], cache)
        config.set_calibration_profile(prof)
    cache_path = Path(timing_cache) if timing_cache else None
    serialized, build_s = trt_builder.build_serialized(builder, network, config, onnx_path, cache_path)
    out = Path(out)
    trt_builder._atomic_write(out, serialized)
    if cache_path is not None:
        trt_builder.save_timing_cache(config, cache_path)
    return {"engine": str(out), "engine_bytes": out.stat().st_size, "onnx": str(onnx_path), "tensorrt": trt.__version__,
            "precision": precision, "plan": asdict(plan), "profile": {k: {kk: list(vv) for kk, vv in v.items()}
                                                                     for k, v in profile.items()},
            "build_seconds": round(build_s, 2)}


def build_vq_engines(
    artifacts: PathLike,
    engine: PathLike,
    precision: str,
    *,
    min_lr: Tuple[int, int] = (64, 64),
    opt_lr: Tuple[int, int] = (256, 256),
    max_lr: Tuple[int, int] = (256, 256),
    sf: int = 4,
    downscale: int = 4,
    encoder_samples: Optional[Sequence[np.ndarray]] = None,
    timing_cache: Optional[PathLike] = None,
    workspace_mib: Optional[int] = None,
) -> Dict[str, Any]:
    """Both VQ engines beside ``engine`` (see :func:`vq_engine_paths`) from the export in ``artifacts``.

    ``encoder_samples``: calibration images as the encoder sees them (INT8 on TensorRT 10.x);
    the decoder calibrates on their latents from the export's float32 encoder graph (ONNX Runtime).
    """
    trt = trt_builder.import_tensorrt()
    plan = vq_build_plan(trt.__version__, precision)
    art = Path(artifacts)
    profiles = vq_profiles(min_lr, opt_lr, max_lr, sf=sf, downscale=downscale)
    enc_out, dec_out = vq_engine_paths(engine, precision)
    enc_feeds = dec_feeds = None
    if plan.calibrator and encoder_samples:
        from ..onnxruntime import make_session

        check_vq_graph(art / VQ_ENCODER_FILE, "fp32")
        sess = make_session(art / VQ_ENCODER_FILE, device="cpu")
        enc_feeds = [{"image": np.ascontiguousarray(x, np.float32)} for x in encoder_samples]
        dec_feeds = [{"latent": sess.run(None, f)[0]} for f in enc_feeds]
    report = {
        "encoder": build_vq_engine(art / VQ_ENCODER_FILE, enc_out, precision, profiles["encoder"], calibration=enc_feeds,
                                   calib_cache=enc_out.with_suffix(".calib"), timing_cache=timing_cache,
                                   workspace_mib=workspace_mib),
        "decoder": build_vq_engine(art / VQ_DECODER_FILE, dec_out, precision, profiles["decoder"], calibration=dec_feeds,
                                   calib_cache=dec_out.with_suffix(".calib"), timing_cache=timing_cache,
                                   workspace_mib=workspace_mib),
    }
    # what the runtime needs to know, without TensorRT: precision and the latent factor
    trt_builder._atomic_write(enc_out.with_suffix(".json"),
                              json.dumps({"precision": precision, "downscale": downscale}).encode())
    return report


class TrtVQ:
    """The VQ engines in TensorRT behind the pipeline's autoencoder interface (float32 in and out)."""

    def __init__(self, engine: PathLike, precision: str, runner: Any, *, plugin_lib: Optional[PathLike] = None):
        """``runner``: the engine runner class (:class:`~.runner.TrtUNet`: any engine, named feeds)."""
        enc, dec = vq_engine_paths(engine, precision)
        missing = [str(p) for p in (enc, dec) if not p.is_file()]
        if missing:
            raise ArtifactError(f"{', '.join(missing)} not found: build them with "
                                f"`bimaco-deploy build --vq-precision {precision} ...`")
        info = json.loads(enc.with_suffix(".json").read_text()) if enc.with_suffix(".json").is_file() else {}
        self.precision = precision
        self.downscale = int(info.get("downscale", 4))
        self.encoder = runner(enc, plugin_lib=plugin_lib)
        self.decoder = runner(dec, plugin_lib=plugin_lib)

    @staticmethod
    def _run(runner: Any, name: str, value: Any) -> Any:
        import torch

        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        out = runner.run({name: np.ascontiguousarray(arr, np.float32)})[runner.outputs[0]].astype(np.float32)
        return torch.from_numpy(np.array(out)) if hasattr(value, "detach") else out

    def encode(self, image: Any) -> Any:
        return self._run(self.encoder, "image", image)

    def decode(self, latent: Any) -> Any:
        return self._run(self.decoder, "latent", latent)
