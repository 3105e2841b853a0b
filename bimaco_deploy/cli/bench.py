"""``bimaco-deploy bench``: speed beside the float baseline, same run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BimacoError
from ._app import app, fail, parse_hw


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
    warmup: int = typer.Option(3, "--warmup"),
    repeats: int = typer.Option(10, "--repeats"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the float baseline."),
    energy: Optional[bool] = typer.Option(
        None, "--energy/--no-energy", help="Energy per image from tegrastats (default: where tegrastats exists)."
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
) -> None:
    """UNet latency of a backend beside the float model of the same family exported the same way, same run;
    on a Jetson also power mode, clocks, per-rail power and energy per image."""
    from ..reports import write_json_atomic
    from ..backends import BackendSpec, resolve_config
    from ..bench.unet import bench_markdown, bench_unet

    try:
        spec = BackendSpec(backend, resolve_config(config), ckpt=ckpt, artifacts=artifacts, engine=engine,
                           plugin_lib=plugin, device=device)
        report = bench_unet(spec, size=parse_hw(size), batch=batch, warmup=warmup, repeats=repeats,
                            threads=threads, baseline=not no_baseline, energy=energy,
                            progress=lambda msg: typer.echo(msg, err=True))
    except BimacoError as err:
        raise fail(err)
    typer.echo(bench_markdown(report))
    if json_path is not None:
        write_json_atomic(json_path, report)
