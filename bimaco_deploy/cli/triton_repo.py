"""``bimaco-deploy triton-repo``: a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import serving_vq_dtype, command, outputs


@command(name="triton-repo")
def triton_repo(
    out: Path = typer.Option(..., "--out", "-o", help="The repository folder to write."),
    backend: str = typer.Option(..., "--backend", "-b", help="tensorrt | onnxruntime | python: what the three networks run on."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a", help="Export directory (the networks' ONNX graphs and the model config)."),
    engines: Optional[Path] = typer.Option(None, "--engines", help="Folder with unet.plan, vq_encoder.plan, vq_decoder.plan (tensorrt)."),
    plugin: Optional[Path] = typer.Option(None, "--plugin", help="libbimaco_trt_plugin.so to copy in (tensorrt; default: the built one)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Config YAML or built-in name (default: the one the export embedded)."),
    runtime: str = typer.Option("torch", "--runtime", help="python backend: torch (packed UNet on our kernels) | onnxruntime (the export)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (python/torch); none: seeded random weights."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="VQ checkpoint (python/torch); none: random weights."),
    seed: int = typer.Option(0, "--seed", help="Random-init seed (python/torch without checkpoints)."),
    vq_precision: Optional[str] = typer.Option(None, "--vq-precision", help="Torch autoencoder: fp32 (the CPU default) | fp16 (slow on CPU)."),
    vq_dtype: Optional[str] = typer.Option(None, "--vq-dtype", hidden=True, help="Deprecated: float32 | float16; use --vq-precision."),
    max_batch: int = typer.Option(4, "--max-batch", help="max_batch_size of every model (dynamic batching)."),
    instances: int = typer.Option(1, "--instances", help="Instances of each model (instance groups)."),
    device: str = typer.Option("gpu", "--device", help="onnxruntime: gpu (CUDA instance groups) | cpu."),
    tile: int = typer.Option(256, "--tile", help="LR tile size: the ensemble's largest input, the tiler's tiles."),
    max_size: int = typer.Option(1024, "--max-size", help="Largest LR side bimacosr_tiled accepts."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Write a Triton model repository: ensemble `bimacosr`, tiler `bimacosr_tiled`, and their models."""
    from ..serving.repository import write_repository

    outputs((out, dict(option="--out", kind="dir", force=force)))
    result = write_repository(
        out, backend=backend, artifacts=artifacts, engines=engines, plugin_lib=plugin, config=config,
        runtime=runtime, ckpt=ckpt, vq_ckpt=vq_ckpt, seed=seed, vq_dtype=serving_vq_dtype(vq_precision, vq_dtype),
        max_batch=max_batch, instances=instances, device=device, tile=tile, max_size=max_size, force=force,
    )
    typer.echo(f"wrote {result.path} ({result.backend}): {', '.join(result.models)}")
    typer.echo(f"serve it: {' '.join(result.command)}   (see {result.path / 'README.txt'})")
