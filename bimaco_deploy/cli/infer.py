"""``bimaco-deploy infer``: super-resolve files and folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BimacoError
from ._app import app, fail


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
    server: Optional[str] = typer.Option(None, "--server", help="Send to a Triton server (http://HOST:PORT or grpc://...); "
                                         "the model options are then the server's."),
) -> None:
    """Super-resolve an image or a folder of images (PNG outputs, written atomically)."""
    import torch

    from ..backends import BackendSpec, resolve_config
    from ..pipeline.factory import make_pipeline
    from ..pipeline.infer import check_inputs, infer as run_infer

    dtypes = {"config": None, "float16": torch.float16, "float32": torch.float32}
    try:
        if vq_dtype not in dtypes:
            raise BimacoError(f"--vq-dtype must be one of {', '.join(dtypes)}, got {vq_dtype!r}")
        check_inputs(inputs, output)  # fail on bad inputs before spending time loading models
        if server is not None:  # the server holds the model: only the files are handled here
            from ..serving.client import infer_server

            local = {"--backend": backend != "torch-ref", "--ckpt": ckpt, "--vq-ckpt": vq_ckpt, "--artifacts": artifacts,
                     "--engine": engine, "--plugin": plugin, "--tile": tile != 256, "--vq-dtype": vq_dtype != "config"}
            if any(local.values()):
                raise BimacoError(f"--server: the server's model and tiling are used; "
                                  f"{', '.join(k for k, v in local.items() if v)} apply to local inference only")

            report = infer_server(server, inputs, output, seed=seed)
        else:
            spec = BackendSpec(backend, resolve_config(config), ckpt=ckpt, seed=seed, artifacts=artifacts,
                               engine=engine, plugin_lib=plugin, device=device)
            pipe = make_pipeline(spec, vq_ckpt, vq_dtype=dtypes[vq_dtype])
            report = run_infer(pipe, inputs, output, seed=seed, tile=tile)
    except BimacoError as err:
        raise fail(err)
    for item in report.items:
        typer.echo(f"{item.input} -> {item.output}  HxW {item.lr_size[0]}x{item.lr_size[1]} -> "
                   f"{item.sr_size[0]}x{item.sr_size[1]}  {item.seconds:.2f} s")
    for path in report.skipped:
        typer.echo(f"skipped {path}")
