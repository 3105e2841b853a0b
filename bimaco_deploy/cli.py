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

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Deploy binarized BiMaCoSR super-resolution models: inspect, export, check, infer, bench, build, doctor.",
)


def _fail(err: BaseException) -> "typer.Exit":
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(code=2)


# Commands are registered below, one small function each. Keep them thin: parse,
# call the library, print.

@app.command()
def build(
    artifacts: Path = typer.Option(..., "--artifacts", "-a", help="Directory written by `bimaco-deploy export` (holds unet.onnx)."),
    out: Path = typer.Option(Path("unet.plan"), "--out", "-o", help="Engine file to write."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 engine (TensorRT 11: needs an fp16 export)."),
    min_hw: str = typer.Option("64", "--min", help="Smallest UNet input H or HxW (padded LR size)."),
    opt_hw: str = typer.Option("256", "--opt", help="H or HxW the engine is tuned for."),
    max_hw: str = typer.Option("256", "--max", help="Largest H or HxW."),
    batch: str = typer.Option("1", "--batch", help="N, MIN:MAX or MIN:OPT:MAX."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache to load and update."),
    plugin_lib: Optional[Path] = typer.Option(None, "--plugin", "--plugin-lib", help="libbimaco_trt_plugin.so to load."),
) -> None:
    """Build a TensorRT engine from an exported unet.onnx with the bimaco plugin (and, when the export
    holds unet_float.onnx, the float baseline's engine beside it: OUT_STEM_float.plan)."""
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
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (.pth); none: seeded random weights."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="VQ autoencoder checkpoint (.pth); none: random weights."),
    backend: str = typer.Option("torch-ref", "--backend", "-b", help="torch-ref | torch | onnxruntime | tensorrt."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Export directory (onnxruntime backend)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine (tensorrt backend)."),
    plugin: Optional[Path] = typer.Option(None, "--plugin", help="libbimaco_trt_plugin.so (tensorrt backend)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (each tile derives its own stream); also the random-init seed."),
    tile: int = typer.Option(256, "--tile", help="LR tile size for large images (the original: 256 or 512)."),
    vq_dtype: str = typer.Option("config", "--vq-dtype", help="config | float16 | float32 (float16 is slow on CPU)."),
) -> None:
    """Super-resolve an image or a folder of images (PNG outputs, written atomically)."""
    import torch

    from .runtime.backends import BackendSpec, make_pipeline, resolve_config
    from .runtime.infer import check_inputs, infer as run_infer

    dtypes = {"config": None, "float16": torch.float16, "float32": torch.float32}
    try:
        if vq_dtype not in dtypes:
            raise BimacoError(f"--vq-dtype must be one of {', '.join(dtypes)}, got {vq_dtype!r}")
        check_inputs(inputs, output)  # fail on bad inputs before spending time loading models
        spec = BackendSpec(backend, resolve_config(config), ckpt=ckpt, seed=seed, artifacts=artifacts,
                           engine=engine, plugin_lib=plugin, device=device)
        pipe = make_pipeline(spec, vq_ckpt, vq_dtype=dtypes[vq_dtype])
        report = run_infer(pipe, inputs, output, seed=seed, tile=tile)
    except BimacoError as err:
        raise _fail(err)
    for item in report.items:
        typer.echo(f"{item.input} -> {item.output}  HxW {item.lr_size[0]}x{item.lr_size[1]} -> "
                   f"{item.sr_size[0]}x{item.sr_size[1]}  {item.seconds:.2f} s")
    for path in report.skipped:
        typer.echo(f"skipped {path}")


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
) -> None:
    """Export a BiMaCoSR checkpoint to packed 1-bit ONNX (custom bimaco nodes + portable twin)."""
    from .export.exporter import export as run_export

    try:
        if (unet_ckpt is None) == (not random_init):
            raise BimacoError("give exactly one of --ckpt FILE or --random-init")
        run_export(config, unet_ckpt, out_dir, seed=seed, vq_ckpt=vq_ckpt, dtype=dtype, opset=opset, force=force,
                   with_vq=False if no_vq else None, float_baseline=float_baseline)
    except BimacoError as err:
        raise _fail(err)


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
    min_psnr: Optional[float] = typer.Option(None, "--min-psnr", help="Level 3 threshold in dB (default: report only)."),
) -> None:
    """Three-level parity of a backend against the PyTorch reference; exit 1 when a threshold fails."""
    import json

    from .runtime.parity import Thresholds, check as run_check, render_check_report

    try:
        lv = [int(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise _fail(ValueError(f"--levels must be comma-separated integers, got {levels!r}"))
    try:
        report = run_check(config, unet_ckpt, artifacts, backend=backend, images=images, vq_ckpt=vq_ckpt,
                           seed=seed, levels=lv, device=device, layers=layer, thresholds=Thresholds(min_psnr_db=min_psnr))
    except BimacoError as err:
        raise _fail(err)
    render_check_report(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1, default=float))
    if not report["passed"]:
        raise typer.Exit(code=1)


@app.command()
def inspect(
    config: str = typer.Option("bimacosr", "--config", "-c", help="Config YAML or built-in name."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (.pth) to inspect; none: structure only."),
    json_path: Path = typer.Option(Path("inspect.json"), "--json", help="Where to write the JSON report."),
) -> None:
    """Binary layers, parameters per branch, ideal deployed size and compression vs the float model."""
    from rich.console import Console

    from .models import load_config, load_unet
    from .models.inventory import inventory, render_inventory
    from .reports import write_json_atomic

    try:
        cfg = load_config(config)
        model = load_unet(cfg, ckpt) if ckpt is not None else None
        inv = inventory(cfg, model, checkpoint=str(ckpt) if ckpt else None)
        Console().print(render_inventory(inv))
        write_json_atomic(json_path, inv.to_dict())
    except BimacoError as err:
        raise _fail(err)
    typer.echo(f"wrote {json_path}")


def _parse_hw(text: str) -> "tuple":
    parts = text.lower().split("x")
    try:
        hw = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise BimacoError(f"size must be H or HxW, got {text!r}")
    return hw


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
    from .reports import write_json_atomic
    from .runtime.backends import BackendSpec, resolve_config
    from .runtime.bench import bench_markdown, bench_unet

    try:
        spec = BackendSpec(backend, resolve_config(config), ckpt=ckpt, artifacts=artifacts, engine=engine,
                           plugin_lib=plugin, device=device)
        report = bench_unet(spec, size=_parse_hw(size), batch=batch, warmup=warmup, repeats=repeats,
                            threads=threads, baseline=not no_baseline, energy=energy,
                            progress=lambda msg: typer.echo(msg, err=True))
    except BimacoError as err:
        raise _fail(err)
    typer.echo(bench_markdown(report))
    if json_path is not None:
        write_json_atomic(json_path, report)


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
