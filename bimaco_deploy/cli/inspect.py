"""``bimaco-deploy inspect``: what a model holds and its ideal deployed size."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BimacoError
from ._app import app, fail


@app.command()
def inspect(
    config: str = typer.Option("bimacosr", "--config", "-c", help="Config YAML or built-in name."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (.pth) to inspect; none: structure only."),
    json_path: Path = typer.Option(Path("inspect.json"), "--json", help="Where to write the JSON report."),
) -> None:
    """Binary layers, parameters per branch, ideal deployed size and compression vs the float model."""
    from rich.console import Console

    from ..models import load_config, load_unet
    from ..models.inventory import inventory, render_inventory
    from ..reports import write_json_atomic

    try:
        cfg = load_config(config)
        model = load_unet(cfg, ckpt) if ckpt is not None else None
        inv = inventory(cfg, model, checkpoint=str(ckpt) if ckpt else None)
        Console().print(render_inventory(inv))
        out = inv.to_dict()
        if cfg.autoencoder is not None and inv.binary:
            from ..export.system_size import render_system_sizes, system_sizes

            # the UNet at its ideal deployed size with fp16 side branches, as `export --dtype fp16` writes it
            out["system_size"] = system_sizes(cfg, inv.deployed_bytes_fp16_side)
            Console().print(render_system_sizes(out["system_size"], "whole system (ideal sizes): UNet (fp16 side "
                                                "branches) + VQ encoder + decoder"))
        write_json_atomic(json_path, out)
    except BimacoError as err:
        raise fail(err)
    typer.echo(f"wrote {json_path}")
