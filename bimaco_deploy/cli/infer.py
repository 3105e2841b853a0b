"""``bimaco-deploy infer``: super-resolve files and folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ._app import CALIB_HELP, CONFIG_HELP, VQ_PRECISION_HELP, command, config_for, note, outputs, progress, warn


@command()
def infer(
    inputs: Path = typer.Argument(..., help="An LR image file, or a folder of them."),
    output: Path = typer.Argument(..., help="A .png file (for one input) or a folder."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (.pth) of torch-ref/torch; none: seeded random weights."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="VQ autoencoder checkpoint (.pth); none: the exported VQ graphs (onnxruntime/tensorrt) or random weights."),
    backend: str = typer.Option("torch-ref", "--backend", "-b", help="torch-ref | torch | onnxruntime | tensorrt."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Export directory (onnxruntime backend; VQ graphs for tensorrt)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine (tensorrt backend)."),
    plugin: Optional[Path] = typer.Option(None, "--plugin", help="libbimaco_trt_plugin.so (tensorrt backend)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (each tile derives its own stream); also the random-init seed."),
    tile: int = typer.Option(256, "--tile", help="LR tile size for large images (the original: 256 or 512); smaller uses less memory."),
    vq_precision: Optional[str] = typer.Option(None, "--vq-precision", help=VQ_PRECISION_HELP),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP),
    vq_batch: Optional[int] = typer.Option(None, "--vq-batch", help="Tiles per autoencoder call for large images "
                                           "(default: 1 on CPU, what fits a quarter of free memory on GPU)."),
    vq_dtype: Optional[str] = typer.Option(None, "--vq-dtype", hidden=True,
                                           help="Deprecated: float32 | float16 | config; use --vq-precision."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write a JSON report here, updated as each image finishes: per image sizes, seconds, tiles; backend, weights and autoencoder used."),
    force: bool = typer.Option(False, "--force", help="Replace existing output images and --json file."),
    server: Optional[str] = typer.Option(None, "--server", help="Send to a Triton server (http://HOST:PORT or grpc://...); "
                                         "the model options are then the server's."),
) -> None:
    """Super-resolve an image or a folder of images (PNG outputs, written atomically); one line per image as it finishes."""
    from ..backends import BackendSpec, make_backend
    from ..models.checkpoint import check_checkpoint_file
    from ..pipeline.factory import make_pipeline
    from ..models.precision import parse_precision
    from ..pipeline.infer import check_inputs, infer as run_infer

    if vq_dtype is not None:
        # the older option, kept as an alias: float32 -> fp32, float16 -> fp16, config -> the config's use_fp16
        legacy = {"float32": "fp32", "float16": "fp16", "config": None}
        if vq_dtype not in legacy or vq_precision is not None:
            raise InputError(f"--vq-dtype is deprecated (float32 | float16 | config); use --vq-precision "
                             f"fp32|fp16|bf16|int8 (got --vq-dtype {vq_dtype!r})")
        cfg_vq = config_for(config, artifacts).autoencoder
        vq_precision = legacy[vq_dtype] or ("fp16" if cfg_vq is not None and cfg_vq.use_fp16 else "fp32")
        warn(f"--vq-dtype is deprecated: running --vq-precision {vq_precision}")
    precision = parse_precision(vq_precision)
    if tile < 1:
        raise InputError(f"--tile {tile}: must be at least 1")
    if vq_batch is not None and vq_batch < 1:
        raise InputError(f"--vq-batch {vq_batch}: must be at least 1")
    # everything that can be refused is refused before models are loaded (or the server is contacted)
    check_inputs(inputs, output, force=force)
    out_dir = output if inputs.is_dir() or output.is_dir() else output.parent
    outputs((json_path, dict(option="--json", kind="file", force=force, suffixes=(".json",))))
    if not out_dir.exists():
        note(f"note: OUTPUT {output}: folder {out_dir} does not exist; it will be created")
    prog = progress()

    def done(item) -> None:
        tiles = f", {item.tiles} tiles" if item.tiles > 1 else ""
        prog.result(f"{item.input} -> {item.output}  HxW {item.lr_size[0]}x{item.lr_size[1]} -> "
                    f"{item.sr_size[0]}x{item.sr_size[1]}  {item.seconds:.2f} s{tiles}, "
                    f"peak memory {item.peak_rss_mib:.0f} MiB")

    if server is not None:  # the server holds the model: only the files are handled here
        from ..serving.client import infer_server

        local = {"--config": config, "--backend": backend != "torch-ref", "--ckpt": ckpt, "--vq-ckpt": vq_ckpt,
                 "--artifacts": artifacts, "--engine": engine, "--plugin": plugin, "--device": device != "cpu",
                 "--tile": tile != 256, "--vq-precision": precision is not None,
                 "--calib": calib, "--vq-batch": vq_batch}
        if any(local.values()):
            raise InputError(f"--server: the server's model and tiling are used; "
                             f"{', '.join(k for k, v in local.items() if v)} apply to local inference only")
        note(f"server {server}: the model, its weights and its tiling are the server's")
        report = infer_server(server, inputs, output, seed=seed, progress=prog, force=force, on_item=done,
                              report_path=json_path, run_info={"server": server, "seed": seed})
    else:
        cfg = config_for(config, artifacts if backend in ("onnxruntime", "tensorrt") else None)
        spec = BackendSpec(backend, cfg, ckpt=ckpt, seed=seed, artifacts=artifacts, engine=engine, plugin_lib=plugin,
                           device=device)
        make_backend(spec)  # options this backend does not use, and a device it cannot use, are refused here
        for path in (ckpt, vq_ckpt):
            if path is not None:
                check_checkpoint_file(path)
        pipe = make_pipeline(spec, vq_ckpt, vq_precision=precision, calib=calib, say=note)
        info = pipe.run_info
        note(f"backend {backend}; UNet: {info['unet']}")
        note(f"autoencoder: {info['autoencoder']}")
        if info["unet_random_weights"]:
            warn("the UNet runs on seeded random weights (no trained checkpoint): the output is noise, not super-resolution")
        if info["autoencoder_random_weights"]:
            warn("the autoencoder runs on seeded random weights (no --vq-ckpt): the output is noise, not super-resolution")
        report = run_infer(pipe, inputs, output, seed=seed, tile=tile, progress=prog, force=force, on_item=done,
                           report_path=json_path, vq_batch=vq_batch,
                           run_info={**info, "seed": seed, "tile": tile, "device": device})
    for path in report.skipped:
        typer.echo(f"skipped {path}")
    if json_path is not None:
        note(f"wrote {json_path}")
