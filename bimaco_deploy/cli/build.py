"""``bimaco-deploy build``: TensorRT engines from an export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import command, outputs


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
) -> None:
    """Build a TensorRT engine from an exported unet.onnx with the bimaco plugin (and, when the export
    holds unet_float.onnx, the float baseline's engine beside it: OUT_STEM_float.plan)."""
    import json

    from ..backends.tensorrt.builder import build_engine, engine_jobs

    jobs = engine_jobs(artifacts, out)
    outputs(*[(dst, dict(option="--out", kind="file", force=force)) for _, dst, _ in jobs],
            (timing_cache, dict(option="--timing-cache", kind="file", force=True)))
    report = build_engine(artifacts, out, fp16=fp16, min_hw=min_hw, opt_hw=opt_hw, max_hw=max_hw, batch=batch,
                          timing_cache=timing_cache, plugin_lib=plugin_lib, force=force)
    typer.echo(json.dumps(report, indent=1))
