"""``bimaco-deploy inspect``: what a model or an exported graph holds, and its ideal deployed size."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ._app import command, config_for, note, outputs


@command()
def inspect(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Config YAML or built-in name (default: bimacosr)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint (.pth) to inspect; none: structure only."),
    onnx_file: Optional[Path] = typer.Option(
        None, "--onnx", help="An exported unet.onnx (or an artifact folder): what it holds, its op contract version, "
        "config, weights and sizes."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Binary layers, parameters per branch, ideal deployed size and compression vs the float model;
    or, with --onnx, what an exported graph holds."""
    from rich.console import Console

    from ..reports import write_json_atomic

    outputs((json_path, dict(option="--json", kind="file", force=force, suffixes=(".json",))))
    if onnx_file is not None:
        from ..export import provenance
        from ..export.inspect_graph import inspect_onnx, render_onnx_inventory

        if ckpt is not None:
            raise InputError(f"--ckpt {ckpt} is not used with --onnx (the graph carries its own weights); drop one")
        info = inspect_onnx(onnx_file)
        if config is not None:  # given: it must be the one the graph was exported with
            from ..models import load_config

            meta = provenance.read_metadata(info["file"])
            provenance.check_config(meta, info["file"], load_config(config))
        Console().print(render_onnx_inventory(info))
        report = info
    else:
        from ..models import load_unet
        from ..models.inventory import inventory, render_inventory

        cfg = config_for(config)
        model = load_unet(cfg, ckpt) if ckpt is not None else None
        inv = inventory(cfg, model, checkpoint=str(ckpt) if ckpt else None)
        Console().print(render_inventory(inv))
        report = inv.to_dict()
        if cfg.autoencoder is not None and inv.binary:
            from ..export.system_size import render_system_sizes, system_sizes

            # the UNet at its ideal deployed size with fp16 side branches, as `export --dtype fp16` writes it
            report["system_size"] = system_sizes(cfg, inv.deployed_bytes_fp16_side)
            Console().print(render_system_sizes(report["system_size"], "whole system (ideal sizes): UNet (fp16 side "
                                                "branches) + VQ encoder + decoder"))
    if json_path is not None:
        write_json_atomic(json_path, report)
        note(f"wrote {json_path}")
