"""``bimaco-deploy export``: a checkpoint to packed 1-bit ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BimacoError
from ._app import CALIB_HELP, app, fail


@app.command()
def export(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write (unet.onnx, unet_portable.onnx, VQ graphs, report)."),
    config: str = typer.Option("bimacosr", "--config", "-c", help="Config YAML or built-in name."),
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
    vq_precision: str = typer.Option("fp32", "--vq-precision", help="VQ graphs: fp32 (ONNX Runtime on CPU; TensorRT "
                                     "10.x builds fp16/INT8 engines from it) | fp16 | int8 (QDQ, calibrated on --calib)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP),
) -> None:
    """Export a BiMaCoSR checkpoint to packed 1-bit ONNX (custom bimaco nodes + portable twin) and the VQ graphs."""
    from ..export.exporter import export as run_export
    from ..models.precision import parse_precision

    try:
        if (unet_ckpt is None) == (not random_init):
            raise BimacoError("give exactly one of --ckpt FILE or --random-init")
        precision = parse_precision(vq_precision)
        samples = source = None
        if precision == "int8" and not no_vq:
            from ..backends import resolve_config
            from ..pipeline.calibration import DEFAULT_CALIB_DIR, calibration_images, calibration_samples

            cfg = resolve_config(config)
            samples = calibration_samples(calibration_images(calib), sf=cfg.diffusion.sf if cfg.diffusion else 4)
            source = str(calib or DEFAULT_CALIB_DIR)
        run_export(config, unet_ckpt, out_dir, seed=seed, vq_ckpt=vq_ckpt, dtype=dtype, opset=opset, force=force,
                   with_vq=False if no_vq else None, float_baseline=float_baseline, vq_precision=precision,
                   vq_calibration=samples, vq_calibration_source=source)
    except BimacoError as err:
        raise fail(err)
