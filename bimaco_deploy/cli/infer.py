"""``bimaco-deploy infer``: super-resolve files and folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BimacoError
from ._app import CALIB_HELP, VQ_PRECISION_HELP, app, fail


@app.command()
def infer(
    inputs: Path = typer.Argument(..., help="An LR image file, or a folder of them."),
    output: Path = typer.Argument(..., help="A .png file (for one input) or a folder."),
    config: str = typer.Option("bimacosr", "--config", "-c", help="Config YAML or built-in name."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (.pth); none: seeded random weights."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="VQ autoencoder checkpoint (.pth); none: random weights."),
    backend: str = typer.Option("torch-ref", "--backend", "-b", help="torch-ref | torch | onnxruntime | tensorrt."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Export directory (onnxruntime backend)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine (tensorrt backend)."),
    plugin: Optional[Path] = typer.Option(None, "--plugin", help="libbimaco_trt_plugin.so (tensorrt backend)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (each tile derives its own stream); also the random-init seed."),
    tile: int = typer.Option(256, "--tile", help="LR tile size for large images (the original: 256 or 512)."),
    vq_precision: Optional[str] = typer.Option(None, "--vq-precision", help=VQ_PRECISION_HELP),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP),
    vq_batch: Optional[int] = typer.Option(None, "--vq-batch", help="Tiles per autoencoder call for large images "
                                           "(default: 1 on CPU, what fits a quarter of free memory on GPU)."),
    vq_dtype: Optional[str] = typer.Option(None, "--vq-dtype", hidden=True,
                                           help="Deprecated: float32 | float16 | config; use --vq-precision."),
) -> None:
    """Super-resolve an image or a folder of images (PNG outputs, written atomically)."""
    from ..backends import BackendSpec, resolve_config
    from ..models.precision import parse_precision
    from ..pipeline.factory import make_pipeline
    from ..pipeline.infer import check_inputs, infer as run_infer

    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        if vq_dtype is not None:
            # the older option, kept as an alias: float32 -> fp32, float16 -> fp16, config -> the config's use_fp16
            legacy = {"float32": "fp32", "float16": "fp16", "config": None}
            if vq_dtype not in legacy or vq_precision is not None:
                raise BimacoError(f"--vq-dtype is deprecated (float32 | float16 | config); use --vq-precision "
                                  f"fp32|fp16|bf16|int8 (got --vq-dtype {vq_dtype!r})")
            cfg_fp16 = resolve_config(config).autoencoder
            vq_precision = legacy[vq_dtype] or ("fp16" if cfg_fp16 is not None and cfg_fp16.use_fp16 else "fp32")
            say(f"--vq-dtype is deprecated: running --vq-precision {vq_precision}")
        precision = parse_precision(vq_precision)
        check_inputs(inputs, output)  # fail on bad inputs before spending time loading models
        spec = BackendSpec(backend, resolve_config(config), ckpt=ckpt, seed=seed, artifacts=artifacts,
                           engine=engine, plugin_lib=plugin, device=device)
        pipe = make_pipeline(spec, vq_ckpt, vq_precision=precision, calib=calib, say=say)
        report = run_infer(pipe, inputs, output, seed=seed, tile=tile, vq_batch=vq_batch)
    except BimacoError as err:
        raise fail(err)
    for item in report.items:
        typer.echo(f"{item.input} -> {item.output}  HxW {item.lr_size[0]}x{item.lr_size[1]} -> "
                   f"{item.sr_size[0]}x{item.sr_size[1]}  {item.seconds:.2f} s, {item.tiles} tile(s), "
                   f"peak memory {item.peak_rss_mib:.0f} MiB (autoencoder {pipe.vq_precision})")
    for path in report.skipped:
        typer.echo(f"skipped {path}")
