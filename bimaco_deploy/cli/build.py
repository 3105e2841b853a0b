"""``bimaco-deploy build``: TensorRT engines from an export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import CALIB_HELP, command, note, outputs


@command()
def build(
    artifacts: Path = typer.Option(..., "--artifacts", "-a", help="Directory written by `bimaco-deploy export` (holds unet.onnx)."),
    out: Path = typer.Option(Path("unet.plan"), "--out", "-o", help="Engine file to write."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 engine (TensorRT 11: needs an fp16 export)."),
    min_hw: str = typer.Option("64", "--min", help="Smallest UNet input H or HxW (padded LR size)."),
    opt_hw: str = typer.Option("256", "--opt", help="H or HxW the engine is tuned for."),
    max_hw: str = typer.Option("256", "--max", help="Largest H or HxW."),
    batch: str = typer.Option("1", "--batch", help="N, MIN:MAX or MIN:OPT:MAX."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache to load and update (updated in place)."),
    plugin_lib: Optional[Path] = typer.Option(None, "--plugin", help="libbimaco_trt_plugin.so to load (default: build/trt, $BIMACO_TRT_PLUGIN)."),
    force: bool = typer.Option(False, "--force", help="Replace existing engine files."),
    vq_precision: Optional[str] = typer.Option(
        None, "--vq-precision", help="Also build the VQ autoencoder's engines beside OUT (OUT_STEM_vq_encoder_P.plan, "
        "..._vq_decoder_P.plan): fp16 (the GPU default) | fp32 | int8 (TensorRT 10.x: calibrated on --calib; 11.x: "
        "from an `export --vq-precision int8`). Without it, infer runs the autoencoder in ONNX Runtime on the CPU."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP + " (--vq-precision int8 on TensorRT 10.x)"),
) -> None:
    """Build a TensorRT engine from an exported unet.onnx with the bimaco plugin (and, when the export
    holds unet_float.onnx, the float baseline's engine beside it: OUT_STEM_float.plan)."""
    import json

    from ..backends.tensorrt.builder import build_engine, engine_jobs, parse_hw
    from ..backends.tensorrt.vq import build_vq_engines, vq_engine_paths
    from ..errors import InputError
    from ..models.precision import parse_precision

    precision = parse_precision(vq_precision)
    if calib is not None and precision != "int8":
        raise InputError(f"--calib {calib} is read by --vq-precision int8 only; drop it")
    jobs = engine_jobs(artifacts, out)
    vq_outs = list(vq_engine_paths(out, precision)) if precision else []
    outputs(*[(dst, dict(option="--out", kind="file", force=force)) for _, dst, _ in jobs],
            *[(dst, dict(option="--out", kind="file", force=force)) for dst in vq_outs],
            (timing_cache, dict(option="--timing-cache", kind="file", force=True)))
    samples = None
    if precision == "int8":
        from ..pipeline.calibration import calibration_images, calibration_samples

        images = calibration_images(calib)
        note(f"INT8 VQ engines: calibration on {len(images)} images (used by TensorRT 10.x; 11.x reads the QDQ graphs)")
        samples = calibration_samples(images, sf=4)
    report = build_engine(artifacts, out, fp16=fp16, min_hw=min_hw, opt_hw=opt_hw, max_hw=max_hw, batch=batch,
                          timing_cache=timing_cache, plugin_lib=plugin_lib, force=force)
    if precision:
        note(f"building the {precision} VQ engines")
        report["vq"] = build_vq_engines(artifacts, out, precision, min_lr=parse_hw(min_hw), opt_lr=parse_hw(opt_hw),
                                        max_lr=parse_hw(max_hw), encoder_samples=samples, timing_cache=timing_cache)
    typer.echo(json.dumps(report, indent=1))
