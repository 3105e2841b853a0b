"""``bimaco-deploy check``: three-level parity against the PyTorch reference."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import BimacoError
from ._app import CALIB_HELP, VQ_PRECISION_HELP, app, fail


@app.command()
def check(
    artifacts: Path = typer.Option(..., "--artifacts", "-a", help="Directory written by `bimaco-deploy export`."),
    config: str = typer.Option("bimacosr", "--config", "-c", help="Config YAML or built-in name (as exported)."),
    unet_ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint; none: the same seeded random init."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="VQ checkpoint for level 3; none: random weights."),
    backend: str = typer.Option("onnxruntime", "--backend", "-b", help="Backend to check."),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="LR image or folder for level 3 (repeatable; default calib/images)."),
    levels: str = typer.Option("1,2,3", "--levels", help="Comma-separated levels to run."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random init and of the noise."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", help="Level 1 only for this binary layer (repeatable)."),
    min_psnr: Optional[float] = typer.Option(
        None, "--min-psnr", help="Level 3 threshold in dB (default: report only): the backend's SR image vs the "
        "reference's, and with --vq-precision the low-precision autoencoder's SR image (UNet held fixed) vs fp32."),
    vq_precision: Optional[str] = typer.Option(None, "--vq-precision", help=VQ_PRECISION_HELP + " Level 3 compares "
                                               "it with the fp32 autoencoder."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP),
) -> None:
    """Three-level parity of a backend against the PyTorch reference; exit 1 when a threshold fails."""
    import json

    from ..check.parity import Thresholds, check as run_check, render_check_report

    try:
        lv = [int(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise fail(ValueError(f"--levels must be comma-separated integers, got {levels!r}"))
    from ..models.precision import parse_precision

    try:
        report = run_check(config, unet_ckpt, artifacts, backend=backend, images=images, vq_ckpt=vq_ckpt,
                           seed=seed, levels=lv, device=device, layers=layer, thresholds=Thresholds(min_psnr_db=min_psnr),
                           vq_precision=parse_precision(vq_precision), calib=calib,
                           say=lambda msg: typer.echo(msg, err=True))
    except BimacoError as err:
        raise fail(err)
    render_check_report(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1, default=float))
    if not report["passed"]:
        raise typer.Exit(code=1)
