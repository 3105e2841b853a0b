"""``bimaco-deploy serve``: the SR pipeline on the Triton server that nvidia-pytriton bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import serving_vq_dtype, command, outputs


@command()
def serve(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Config YAML or built-in name."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (.pth); none: seeded random weights."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="VQ autoencoder checkpoint (.pth); none: random weights."),
    backend: str = typer.Option("torch", "--backend", "-b", help="torch (packed UNet on our kernels) | onnxruntime."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Export directory (onnxruntime; default: export now)."),
    repository: Optional[Path] = typer.Option(None, "--repository", help="Serve this repository (`triton-repo --backend python`) instead."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port."),
    seed: int = typer.Option(0, "--seed", help="Random-init seed (without checkpoints)."),
    vq_precision: Optional[str] = typer.Option(None, "--vq-precision", help="Torch autoencoder: fp32 (the CPU default) | fp16 (slow on CPU)."),
    vq_dtype: Optional[str] = typer.Option(None, "--vq-dtype", hidden=True, help="Deprecated: float32 | float16; use --vq-precision."),
    max_batch: int = typer.Option(4, "--max-batch", help="Dynamic batching: requests per batch."),
    instances: int = typer.Option(1, "--instances", help="Instances of each model."),
    tile: int = typer.Option(256, "--tile", help="LR tile size (as infer --tile)."),
    max_size: int = typer.Option(1024, "--max-size", help="Largest LR side accepted."),
    log: Optional[Path] = typer.Option(None, "--log", help="Write the server's log here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --log file."),
) -> None:
    """Serve models `bimacosr` and `bimacosr_tiled` on Triton until Ctrl-C / SIGTERM (health: /v2/health/ready)."""
    from ..serving.server import serve as run_serve

    outputs((log, dict(option="--log", kind="file", force=force)))
    code = run_serve(repository=repository, config=config, ckpt=ckpt, vq_ckpt=vq_ckpt, backend=backend,
                     artifacts=artifacts, seed=seed, vq_dtype=serving_vq_dtype(vq_precision, vq_dtype),
                     host=host, http_port=http_port, grpc_port=grpc_port, max_batch=max_batch,
                     instances=instances, tile=tile, max_size=max_size, log_path=log, echo=typer.echo)
    if code:
        typer.echo(f"error: tritonserver exited with code {code}", err=True)
        raise typer.Exit(code=1)
