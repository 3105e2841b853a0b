"""``bimaco-deploy bench``: speed beside the float baseline, same run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ._app import CONFIG_HELP, command, config_for, note, outputs, parse_hw, warn


@command()
def bench(
    backend: str = typer.Option("torch", "--backend", "-b", help="torch | torch-ref | onnxruntime | tensorrt."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint of torch/torch-ref; none: seeded random weights."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Export directory (onnxruntime backend)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine (tensorrt backend)."),
    plugin: Optional[Path] = typer.Option(None, "--plugin", help="libbimaco_trt_plugin.so (tensorrt backend)."),
    size: str = typer.Option("64x64", "--size", help="Latent H or HxW (= padded LR size)."),
    batch: int = typer.Option(1, "--batch"),
    warmup: int = typer.Option(3, "--warmup"),
    repeats: int = typer.Option(10, "--repeats"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads, at least 1 (default: torch's)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the float baseline."),
    energy: Optional[bool] = typer.Option(
        None, "--energy/--no-energy", help="Energy per image from tegrastats (default: where tegrastats exists)."
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """UNet latency of a backend beside the float model of the same family exported the same way, same run;
    on a Jetson also power mode, clocks, per-rail power and energy per image."""
    from ..backends import BackendSpec, make_backend
    from ..models.checkpoint import check_checkpoint_file
    from ..bench.unet import bench_markdown, bench_unet
    from ..reports import write_json_atomic

    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1 (or leave it out for torch's default)")
    hw = parse_hw(size)
    outputs((json_path, dict(option="--json", kind="file", force=force, suffixes=(".json",))))
    cfg = config_for(config, artifacts if backend in ("onnxruntime", "tensorrt") else None)
    spec = BackendSpec(backend, cfg, ckpt=ckpt, artifacts=artifacts, engine=engine, plugin_lib=plugin, device=device)
    make_backend(spec)  # options this backend does not use, and a device it cannot use, are refused here
    if ckpt is not None:
        check_checkpoint_file(ckpt)
    if backend in ("torch", "torch-ref") and ckpt is None:
        warn("no --ckpt: timing seeded random weights (speed does not depend on the weights)")
    report = bench_unet(spec, size=hw, batch=batch, warmup=warmup, repeats=repeats, threads=threads,
                        baseline=not no_baseline, energy=energy, progress=note)
    typer.echo(bench_markdown(report))
    if json_path is not None:
        write_json_atomic(json_path, report)
        note(f"wrote {json_path}")
