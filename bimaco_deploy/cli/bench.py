"""``bimaco-deploy bench``: speed beside the float baseline, same run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BimacoError
from ._app import CALIB_HELP, VQ_PRECISION_HELP, app, fail, parse_hw


@app.command()
def bench(
    backend: str = typer.Option("torch", "--backend", "-b", help="torch | torch-ref | onnxruntime | tensorrt."),
    config: str = typer.Option("bimacosr", "--config", "-c", help="Config YAML or built-in name."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint; none: seeded random weights."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Export directory (onnxruntime backend)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine (tensorrt backend)."),
    plugin: Optional[Path] = typer.Option(None, "--plugin", help="libbimaco_trt_plugin.so (tensorrt backend)."),
    size: str = typer.Option("64x64", "--size", help="Latent H or HxW (= padded LR size)."),
    batch: int = typer.Option(1, "--batch"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed calls first (default 3; --pipeline: 1)."),
    repeats: int = typer.Option(10, "--repeats"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the float baseline."),
    energy: Optional[bool] = typer.Option(
        None, "--energy/--no-energy", help="Energy per image from tegrastats (default: where tegrastats exists)."
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    pipeline: bool = typer.Option(False, "--pipeline", help="Time the whole SR of one image, stage by stage, "
                                  "binary pipeline vs float pipeline (float UNet + fp32 autoencoder)."),
    lr_size: str = typer.Option("64x64", "--lr-size", help="--pipeline: LR image H or HxW (up to one 256x256 tile)."),
    vq_precision: Optional[str] = typer.Option(None, "--vq-precision", help=VQ_PRECISION_HELP),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="--pipeline: VQ checkpoint; none: seeded random weights."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP),
) -> None:
    """UNet latency of a backend beside the float model of the same family exported the same way, same run;
    on a Jetson also power mode, clocks, per-rail power and energy per image. With --pipeline: the whole SR
    pipeline end to end (pre, encode, UNet, decode, post), binary vs float, interleaved."""
    from ..reports import write_json_atomic
    from ..backends import BackendSpec, resolve_config
    from ..bench.unet import bench_markdown, bench_unet

    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        spec = BackendSpec(backend, resolve_config(config), ckpt=ckpt, artifacts=artifacts, engine=engine,
                           plugin_lib=plugin, device=device)
        if pipeline:
            from ..bench.pipeline import bench_pipeline, pipeline_markdown
            from ..models.precision import parse_precision

            report = bench_pipeline(spec, vq_ckpt=vq_ckpt, vq_precision=parse_precision(vq_precision), calib=calib,
                                    lr_size=parse_hw(lr_size), warmup=1 if warmup is None else warmup,
                                    repeats=repeats, threads=threads, baseline=not no_baseline, progress=say)
            text = pipeline_markdown(report)
        else:
            if vq_precision or vq_ckpt or calib:
                raise BimacoError("--vq-precision, --vq-ckpt and --calib apply to --pipeline (the UNet bench has no autoencoder)")
            report = bench_unet(spec, size=parse_hw(size), batch=batch, warmup=3 if warmup is None else warmup, repeats=repeats,
                                threads=threads, baseline=not no_baseline, energy=energy, progress=say)
            text = bench_markdown(report)
    except BimacoError as err:
        raise fail(err)
    typer.echo(text)
    if json_path is not None:
        write_json_atomic(json_path, report)
