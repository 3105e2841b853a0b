"""``bimaco-deploy export``: a checkpoint to packed 1-bit ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ._app import CALIB_HELP, DEFAULT_CONFIG, command, note, outputs, progress, warn


@command()
def export(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write (unet.onnx, unet_portable.onnx, VQ graphs, report)."),
    config: str = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Config YAML or built-in name."),
    unet_ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (.pth)."),
    random_init: bool = typer.Option(False, "--random-init", help="No checkpoint: seeded random weights (sizes, speed)."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="VQ autoencoder checkpoint; VQ graphs are written with it (or under --random-init)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random init."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | fp16 (full-precision weights and activations)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    no_vq: bool = typer.Option(False, "--no-vq", help="Do not write the VQ graphs."),
    float_baseline: bool = typer.Option(
        False, "--float-baseline",
        help="Also write unet_float.onnx: the float model of the same family, exported the same way (bench baseline).",
    ),
    fuse_side_branches: bool = typer.Option(
        True, "--fuse-side-branches/--no-fuse-side-branches",
        help="unet.onnx: each binary layer one bimaco node that also applies its RPReLU, SMB and LRMB (the "
             "plugin fuses them); --no-fuse-side-branches keeps the side branches as standard ops beside the node.",
    ),
    vq_precision: str = typer.Option("fp32", "--vq-precision", help="VQ graphs: fp32 (ONNX Runtime on CPU; TensorRT "
                                     "builds fp16/INT8 engines from it) | fp16 | int8 (QDQ, calibrated on --calib)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP),
) -> None:
    """Export a BiMaCoSR checkpoint to packed 1-bit ONNX (custom bimaco nodes + portable twin)."""
    from ..export.exporter import export as run_export
    from ..models.precision import parse_precision

    if (unet_ckpt is None) == (not random_init):
        raise InputError("give exactly one of --ckpt FILE or --random-init")
    precision = parse_precision(vq_precision)
    if calib is not None and (precision != "int8" or no_vq):
        raise InputError(f"--calib {calib} is read by --vq-precision int8 only (with VQ graphs); drop it")
    outputs((out_dir, dict(option="--out", kind="dir", force=force)))
    samples = source = None
    if precision == "int8" and not no_vq:
        from ..models import load_config
        from ..pipeline.calibration import DEFAULT_CALIB_DIR, calibration_images, calibration_samples

        cfg = load_config(config)
        images = calibration_images(calib)
        source = str(calib or DEFAULT_CALIB_DIR)
        note(f"calibrating the INT8 autoencoder on {len(images)} images of {source}")
        samples = calibration_samples(images, sf=cfg.diffusion.sf if cfg.diffusion else 4)
    if random_init:
        warn("--random-init: the artifacts hold seeded random weights; their outputs are noise (sizes and speed only)")
    run_export(config, unet_ckpt, out_dir, seed=seed, vq_ckpt=vq_ckpt, dtype=dtype, opset=opset, force=force,
               with_vq=False if no_vq else None, float_baseline=float_baseline, fuse_side_branches=fuse_side_branches,
               progress=progress(), vq_precision=precision, vq_calibration=samples, vq_calibration_source=source)
