"""``bimaco-deploy doctor``: what this machine can run."""

from __future__ import annotations


import typer

from ._app import command


@command(writes=False)
def doctor(json_out: bool = typer.Option(False, "--json", help="Print the facts as JSON (to stdout).")) -> None:
    """What this machine can run (CPU and the kernel ISA in use, CUDA, TensorRT, plugin, ONNX Runtime) and what
    to install."""
    import json

    from rich.console import Console

    from ..doctor import doctor as run_doctor, render_doctor

    facts = run_doctor()
    if json_out:
        typer.echo(json.dumps(facts, indent=1, default=str))
    else:
        Console().print(render_doctor(facts))
