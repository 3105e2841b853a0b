"""``bimaco-deploy bench``: speed beside the float baseline, same run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ._app import CALIB_HELP, CONFIG_HELP, VQ_PRECISION_HELP, command, config_for, note, outputs, parse_hw, warn


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
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed calls first (default 3; --pipeline: 1)."),
    repeats: int = typer.Option(10, "--repeats"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads, at least 1 (default: torch's)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the float baseline."),
    energy: Optional[bool] = typer.Option(
        None, "--energy/--no-energy", help="Energy per image from tegrastats (default: where tegrastats exists)."
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
    pipeline: bool = typer.Option(False, "--pipeline", help="Time the whole SR of one image, stage by stage, "
                                  "binary pipeline vs float pipeline (float UNet + fp32 autoencoder)."),
    lr_size: str = typer.Option("64x64", "--lr-size", help="--pipeline: LR image H or HxW (up to one 256x256 tile)."),
    vq_precision: Optional[str] = typer.Option(None, "--vq-precision", help=VQ_PRECISION_HELP),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="--pipeline: VQ checkpoint; none: seeded random weights."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP),
) -> None:
    """UNet latency of a backend beside the float model of the same family exported the same way, same run;
    on a Jetson also power mode, clocks, per-rail power and energy per image. With --pipeline: the whole SR
    pipeline end to end (pre, encode, UNet, decode, post), binary vs float, interleaved, with peak memory."""
    from ..backends import BackendSpec, make_backend
    from ..models.checkpoint import check_checkpoint_file
    from ..bench.unet import bench_markdown, bench_unet
    from ..reports import write_json_atomic

    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1 (or leave it out for torch's default)")
    if not pipeline:
        given = [o for o, v in (("--vq-precision", vq_precision), ("--vq-ckpt", vq_ckpt), ("--calib", calib),
                                ("--lr-size", lr_size if lr_size != "64x64" else None)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} apply to --pipeline (the UNet bench has no autoencoder); "
                             "add --pipeline or drop them")
    elif size != "64x64" or batch != 1 or energy:
        raise InputError("--size, --batch and --energy are UNet-bench options; --pipeline takes --lr-size")
    hw = parse_hw(lr_size if pipeline else size)
    outputs((json_path, dict(option="--json", kind="file", force=force, suffixes=(".json",))))
    cfg = config_for(config, artifacts if backend in ("onnxruntime", "tensorrt") else None)
    spec = BackendSpec(backend, cfg, ckpt=ckpt, artifacts=artifacts, engine=engine, plugin_lib=plugin, device=device)
    make_backend(spec)  # options this backend does not use, and a device it cannot use, are refused here
    for path in (ckpt, vq_ckpt):
        if path is not None:
            check_checkpoint_file(path)
    if backend in ("torch", "torch-ref") and ckpt is None:
        warn("no --ckpt: timing seeded random weights (speed does not depend on the weights)")
    if pipeline:
        from ..bench.pipeline import bench_pipeline, pipeline_markdown
        from ..models.precision import parse_precision

        report = bench_pipeline(spec, vq_ckpt=vq_ckpt, vq_precision=parse_precision(vq_precision), calib=calib,
                                lr_size=hw, warmup=1 if warmup is None else warmup, repeats=repeats,
                                threads=threads, baseline=not no_baseline, progress=note)
        typer.echo(pipeline_markdown(report))
    else:
        report = bench_unet(spec, size=hw, batch=batch, warmup=3 if warmup is None else warmup, repeats=repeats,
                            threads=threads, baseline=not no_baseline, energy=energy, progress=note)
        typer.echo(bench_markdown(report))
    if json_path is not None:
        write_json_atomic(json_path, report)
        note(f"wrote {json_path}")
