"""``bimaco-deploy export``: checkpoint + config -> an artifact directory.

The directory holds

* ``unet.onnx``: the UNet with ``bimaco`` custom nodes (packed int32 sign bits),
  for TensorRT with our plugin and for our own kernels. By default each node also
  carries its layer's side branches (RPReLU, SMB, LRMB: ``fuse_side_branches``), which
  the plugin applies in its GEMM epilogue;
* ``unet_portable.onnx``: the same graph with every custom node expanded into
  standard ops reading the same initializers, for ONNX Runtime and for checks;
* ``vq_encoder.onnx`` / ``vq_decoder.onnx`` when a VQ checkpoint is given (or
  with random weights under random init), at ``vq_precision`` (fp32, fp16, or int8 QDQ
  graphs calibrated on the samples given, see :mod:`.vq_quant`);
* ``unet_float.onnx`` on request (``float_baseline``): the float model of the same
  family (the config without binarization, seeded random weights: only its speed is
  used) written by the same graph writer in the same dtype, the baseline that
  ``bench`` runs on the same backend and TensorRT builds the same way;
* ``export_report.json``: see :mod:`.report`; with the whole system's size (UNet + encoder
  + decoder at every autoencoder precision, :mod:`.system_size`) beside the UNet-only figure.

The directory is written next to its destination under a temporary name and
renamed at the end, so a failure never leaves a half-written artifact.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import onnx

from ..errors import ConfigError
from ..plugins import contract
from ..progress import Progress
from ..reports import check_output, make_temp_dir
from .artifacts import FLOAT_FILE, PORTABLE_FILE, REPORT_FILE, UNET_FILE, VQ_DECODER_FILE, VQ_ENCODER_FILE
from .graph_builder import DEFAULT_OPSET
from .layer_params import state_to_numpy
from .portable import to_portable
from .provenance import weights_metadata
from .report import build_report, render_report
from .unet_graph import build_unet_graph

PathLike = Union[str, Path]


DTYPES = {"fp32": np.float32, "fp16": np.float16}


@dataclass
class ExportResult:
    """Where the artifacts went, and the report written beside them."""

    out_dir: Path
    files: Dict[str, Path]
    report: Dict[str, Any]


def _metadata(cfg: Any, dtype: str, graph_form: str, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    from .. import __version__

    meta = {
        "bimaco_contract_version": str(contract.CONTRACT_VERSION),
        "bimaco_deploy_version": __version__,
        "float_dtype": str(np.dtype(DTYPES[dtype])),
        "graph_form": graph_form,
        "config_yaml": Path(cfg.source).read_text(),
        "config_source": str(cfg.source),
    }
    if extra:
        meta.update(extra)
    return meta


def _unet_io_metadata(cfg: Any) -> Dict[str, str]:
    """What every UNet graph says about its interface (the runtimes read size_multiple)."""
    return {"size_multiple": str(cfg.unet.size_multiple), "inputs": "x,timesteps,lq", "outputs": "out"}


def _set_metadata(model: onnx.ModelProto, meta: Dict[str, str]) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)


def _save(model: onnx.ModelProto, path: Path) -> None:
    # one self-contained file: the binary UNet is small enough for a single protobuf
    onnx.save_model(model, str(path))


def _system_size(cfg: Any, files: Dict[str, Path], vq_precision: Optional[str]) -> Dict[str, Any]:
    """Whole-system size: the written unet.onnx and VQ graphs, estimates for the other precisions."""
    from .system_size import system_sizes

    measured = None
    if vq_precision is not None:
        measured = {"precision": vq_precision, "encoder": files[VQ_ENCODER_FILE].stat().st_size,
                    "decoder": files[VQ_DECODER_FILE].stat().st_size}
    return system_sizes(cfg, files[UNET_FILE].stat().st_size, measured=measured)


def build_float_baseline(cfg: Any, *, dtype: str = "fp32", seed: Optional[int] = None) -> onnx.ModelProto:
    """The float twin of ``cfg``'s UNet (seeded random weights) as ONNX, written like ``unet.onnx``.

    Same inputs, outputs, dtype and graph writer as the binary export; every binary layer
    is the plain Conv / MatMul of the float model instead.
    """
    from dataclasses import replace

    from ..models import float_twin, load_unet

    fcfg = replace(cfg, unet=float_twin(cfg.unet))
    model = load_unet(fcfg, None, seed=seed)
    state = state_to_numpy(model.state_dict())
    del model
    graph = build_unet_graph(fcfg.unet, state, float_dtype=DTYPES[dtype], source="float twin, random init",
                             float_model=True)
    extra = {**_unet_io_metadata(cfg), "float_baseline_of": str(cfg.source)}
    _set_metadata(graph.model, _metadata(cfg, dtype, "float", extra))
    return graph.model


def export(
    config: PathLike,
    ckpt: Optional[PathLike],
    out_dir: PathLike,
    *,
    seed: Optional[int] = None,
    vq_ckpt: Optional[PathLike] = None,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    progress: Union[bool, Progress, None] = True,
    console: Any = None,
    print_report: bool = True,
    with_vq: Optional[bool] = None,
    float_baseline: bool = False,
    vq_precision: str = "fp32",
    vq_calibration: Optional[Any] = None,
    vq_calibration_source: Optional[str] = None,
    fuse_side_branches: bool = True,
) -> ExportResult:
    """Export a BiMaCoSR UNet (and optionally its VQ autoencoder) to an artifact directory.

    ``ckpt`` None means seeded random weights (``seed``, default 0), for size and
    speed figures of a config without a trained checkpoint. ``dtype`` "fp16"
    stores full-precision weights and activations in float16 (sign bits,
    alpha and bias of the binary cores stay as the contract says). Refuses an
    existing ``out_dir`` unless ``force``. ``with_vq``: None writes the VQ graphs
    when ``vq_ckpt`` is given or under random init; False never does.
    ``float_baseline`` also writes ``unet_float.onnx`` (see the module docstring).
    ``vq_precision``: fp32 (default), fp16 or int8; int8 needs ``vq_calibration``, the encoder
    inputs to calibrate on (:func:`bimaco_deploy.pipeline.calibration.calibration_samples`),
    named in the report by ``vq_calibration_source``.

    ``fuse_side_branches`` (default on) writes each binary layer of ``unet.onnx`` as one
    ``bimaco`` node carrying RPReLU, SMB and LRMB (the contract's side-branch attributes):
    TensorRT then runs one plugin layer per binary layer instead of the plugin plus about
    ten standard layers, and never materialises the SMB's [N, O*R, H, W] gather (64x the
    layer's input width on the tiny fixture). Off, the side branches are standard ops, as
    they always are in ``unet_portable.onnx``, which is the same maths either way.
    """
    from ..models import load_autoencoder, load_config, load_unet
    from ..models.inventory import float_param_count
    from ..models.checkpoint import check_checkpoint_file, read_state_dict

    from .vq import ONNX_VQ_PRECISIONS, vq_graphs

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if vq_precision not in ONNX_VQ_PRECISIONS:
        raise ConfigError(f"--vq-precision for exported graphs must be one of {', '.join(ONNX_VQ_PRECISIONS)} "
                          f"(bf16 runs in torch), got {vq_precision!r}")
    if vq_precision == "int8" and not vq_calibration:
        raise ConfigError("--vq-precision int8 needs calibration images (--calib DIR, default calib/calibration)")
    if opset != DEFAULT_OPSET:
        raise ConfigError(f"only opset {DEFAULT_OPSET} is supported (the graphs use opset-{DEFAULT_OPSET} op forms), got {opset}")
    out_dir = Path(out_dir)
    check_output(out_dir, option="--out", kind="dir", force=force)
    for path in (ckpt, vq_ckpt):
        if path is not None:
            check_checkpoint_file(path)  # named now, before anything is written
    prog = Progress.of(progress)
    cfg = load_config(config)
    if cfg.unet.binary is None:
        raise ConfigError(f"{cfg.source}: describes a full-precision UNet; export needs a binarized (BiMaCoSR) config")
    if vq_ckpt is not None and with_vq is False:
        raise ConfigError(f"--vq-ckpt {vq_ckpt} is not used with --no-vq; drop one of them")
    if vq_ckpt is not None and cfg.autoencoder is None:
        raise ConfigError(f"{cfg.source}: a VQ checkpoint was given but the config has no 'autoencoder' section")
    from rich.console import Console

    console = console or Console(stderr=True)
    # assembled beside its destination, with the user's normal permissions (not mkdtemp's 0700)
    tmp = make_temp_dir(out_dir.parent, prefix=f".{out_dir.name}.tmp-")
    try:
        want_vq = (vq_ckpt is not None or ckpt is None) if with_vq is None else with_vq
        want_vq = want_vq and cfg.autoencoder is not None
        steps = 4 + int(float_baseline) + int(want_vq)
        with prog.task("exporting", total=steps, unit="steps") as task:
            task.note = "loading the UNet" + (" (random init)" if ckpt is None else "")
            if ckpt is None:
                model = load_unet(cfg, None, seed=seed)
                state = state_to_numpy(model.state_dict())
                del model
            else:
                # the raw checkpoint (unwrapped, prefix stripped): the graph writer consumes every
                # key itself, so dead entries are counted and unknown ones are refused
                state = state_to_numpy(read_state_dict(ckpt))
            task.advance(note="writing unet.onnx (packing sign bits)")
            graph = build_unet_graph(cfg.unet, state, float_dtype=DTYPES[dtype], source=str(ckpt or "random init"),
                                     fuse_side_branches=fuse_side_branches)
            del state
            one = cfg.diffusion.one_step() if cfg.diffusion is not None else None
            extra = {
                **_unet_io_metadata(cfg),
                **weights_metadata(ckpt, seed),
                # tensor names around every binary layer: the parity checker cuts single-layer graphs here
                "binary_layers": json.dumps([[r.name, r.input_name, r.output_name, r.x_rank] for r in graph.layers]),
                "side_branches": "fused" if fuse_side_branches else "standard",
            }
            if one is not None:
                extra.update(timestep=str(one.timestep), prior_scale=repr(one.prior_scale), input_scale=repr(one.input_scale))
            _set_metadata(graph.model, _metadata(cfg, dtype, "custom", extra))
            files: Dict[str, Path] = {}
            _save(graph.model, tmp / UNET_FILE)
            files[UNET_FILE] = tmp / UNET_FILE
            task.advance(note="writing unet_portable.onnx (standard-op expansion)")
            portable = to_portable(graph.model)
            _save(portable, tmp / PORTABLE_FILE)
            files[PORTABLE_FILE] = tmp / PORTABLE_FILE
            models = {UNET_FILE: graph.model, PORTABLE_FILE: portable}
            if float_baseline:
                task.advance(note="writing unet_float.onnx (the float baseline)")
                fmodel = build_float_baseline(cfg, dtype=dtype, seed=seed)
                _save(fmodel, tmp / FLOAT_FILE)
                files[FLOAT_FILE] = tmp / FLOAT_FILE
                models[FLOAT_FILE] = fmodel
            vq_written = None
            vq_info: Dict[str, Any] = {}
            if want_vq:
                task.advance(note=f"writing the VQ encoder and decoder ({vq_precision}"
                             + (", calibrating" if vq_precision == "int8" else "") + ")")
                vq = load_autoencoder(cfg.autoencoder, vq_ckpt, seed=seed)
                enc, dec, vq_info = vq_graphs(cfg.autoencoder, state_to_numpy(vq.state_dict()), vq_precision,
                                              samples=vq_calibration, source=str(vq_ckpt or "random init"))
                vq_written = vq_precision
                graph_dtype = "fp16" if vq_precision == "fp16" else "fp32"
                for name, m in ((VQ_ENCODER_FILE, enc), (VQ_DECODER_FILE, dec)):
                    own = {p.key: p.value for p in m.metadata_props}  # vq_precision, downscale, quantization
                    _set_metadata(m, {**_metadata(cfg, graph_dtype, "vq", weights_metadata(vq_ckpt, seed)), **own})
                    _save(m, tmp / name)
                    files[name] = tmp / name
                    models[name] = m
            task.advance(note="writing the report")
            report = build_report(
                config_path=Path(cfg.source),
                inputs={"config": Path(cfg.source), "unet_checkpoint": Path(ckpt) if ckpt else None,
                        "vq_checkpoint": Path(vq_ckpt) if vq_ckpt else None},
                layers=graph.layers,
                float_twin_params=float_param_count(cfg),
                files=files,
                models=models,
                dead_keys=graph.dead_keys,
                dtype=dtype,
                opset=opset,
                extra={"random_init": ckpt is None, "seed": seed if ckpt is None else None, "vq_precision": vq_written,
                       "vq_calibration": ({"source": vq_calibration_source, **{k: v for k, v in vq_info.get("calibration", {}).items()
                                                                                if k != "activation_scales"}}
                                          if vq_written == "int8" else None)},
            )
            report["system_size"] = _system_size(cfg, files, vq_written)
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1))
            task.advance(note="done")
        # publish: move any old directory aside first, so the swap leaves one complete directory
        backup = None
        if out_dir.exists():
            backup = out_dir.with_name(f".{out_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out_dir.rename(backup)
        tmp.rename(out_dir)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = {name: out_dir / name for name in files}
    if print_report:
        render_report(report, None if console.stderr else console)  # the table goes to stdout
        from .system_size import render_system_sizes

        (Console() if console.stderr else console).print(render_system_sizes(report["system_size"]))
    return ExportResult(out_dir=out_dir, files=final, report=report)
