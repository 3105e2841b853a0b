"""The ``bimaco-deploy`` command line: thin wrappers over library functions.

Each command parses its options, calls one library function, prints its table
and exits non-zero on failure. A :class:`~bimaco_deploy.errors.BimacoError` is
shown as a one-line message, not a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import BimacoError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def _fail(err: BaseException) -> "typer.Exit":
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(code=2)


# Commands are registered below, one small function each. Keep them thin: parse,
# call the library, print.

@app.command()
def build(
    artifacts: Path = typer.Argument(..., help="Directory written by `bimaco-deploy export` (holds unet.onnx)."),
    out: Path = typer.Option(Path("unet.plan"), "--out", "-o", help="Engine file to write."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 engine (TensorRT 11: needs an fp16 export)."),
    min_hw: str = typer.Option("64", "--min", help="Smallest UNet input H or HxW (padded LR size)."),
    opt_hw: str = typer.Option("256", "--opt", help="H or HxW the engine is tuned for."),
    max_hw: str = typer.Option("256", "--max", help="Largest H or HxW."),
    batch: str = typer.Option("1", "--batch", help="N, MIN:MAX or MIN:OPT:MAX."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache to load and update."),
    plugin_lib: Optional[Path] = typer.Option(None, "--plugin-lib", help="libbimaco_trt_plugin.so to load."),
) -> None:
    """Build a TensorRT engine from an exported unet.onnx with the bimaco plugin."""
    import json

    from .runtime.trt_builder import build_engine

    try:
        report = build_engine(artifacts, out, fp16=fp16, min_hw=min_hw, opt_hw=opt_hw, max_hw=max_hw, batch=batch,
                              timing_cache=timing_cache, plugin_lib=plugin_lib)
    except BimacoError as err:
        raise _fail(err)
    typer.echo(json.dumps(report, indent=1))


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print the facts as JSON.")) -> None:
    """What this machine can run (CPU, CUDA, TensorRT, plugin, ONNX Runtime) and what to install."""
    import json

    from rich.console import Console

    from .runtime.doctor import doctor as run_doctor, render_doctor

    facts = run_doctor()
    if json_out:
        typer.echo(json.dumps(facts, indent=1, default=str))
    else:
        Console().print(render_doctor(facts))


@app.command()
def infer(
    inputs: Path = typer.Argument(..., help="An LR image file, or a folder of them."),
    output: Path = typer.Argument(..., help="A .png file (for one input) or a folder."),
    config: str = typer.Option("bimacosr", "--config", "-c", help="Config YAML or built-in name."),
    unet_ckpt: Optional[Path] = typer.Option(None, "--unet", help="UNet checkpoint (.pth); none: random weights."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq", help="VQ autoencoder checkpoint (.pth); none: random weights."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (each tile derives its own stream)."),
    tile: int = typer.Option(256, "--tile", help="LR tile size for large images (the original: 256 or 512)."),
    vq_dtype: str = typer.Option("config", "--vq-dtype", help="config | float16 | float32 (float16 is slow on CPU)."),
) -> None:
    """Super-resolve images with the PyTorch reference pipeline."""
    import torch

    from .runtime.infer import check_inputs, infer as run_infer
    from .runtime.pipeline import reference_pipeline

    dtypes = {"config": None, "float16": torch.float16, "float32": torch.float32}
    if vq_dtype not in dtypes:
        raise _fail(ValueError(f"--vq-dtype must be one of {', '.join(dtypes)}, got {vq_dtype!r}"))
    try:
        check_inputs(inputs, output)  # fail on bad inputs before spending time loading models
        pipe = reference_pipeline(config, unet_ckpt, vq_ckpt, seed=seed, vq_dtype=dtypes[vq_dtype])
        report = run_infer(pipe, inputs, output, seed=seed, tile=tile)
    except BimacoError as err:
        raise _fail(err)
    for item in report.items:
        typer.echo(f"{item.input} -> {item.output}  {item.lr_size[1]}x{item.lr_size[0]} -> "
                   f"{item.sr_size[1]}x{item.sr_size[0]}  {item.seconds:.2f} s")
    for path in report.skipped:
        typer.echo(f"skipped {path}")


# <commands>


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except BimacoError as err:  # pragma: no cover - typer handles most exits itself
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
