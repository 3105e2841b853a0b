"""The typer app every command module registers with, and what commands share."""

from __future__ import annotations

from typing import Tuple

import typer

from ..errors import BimacoError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Deploy binarized BiMaCoSR super-resolution models: inspect, export, check, infer, bench, build, doctor, serve, triton-repo.",
)


def fail(err: BaseException) -> "typer.Exit":
    """Print a user error as one line and exit 2 (bad input)."""
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(code=2)


def parse_hw(text: str) -> Tuple[int, int]:
    """``H`` or ``HxW`` as (H, W)."""
    parts = text.lower().split("x")
    try:
        hw = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise BimacoError(f"size must be H or HxW, got {text!r}")
    return hw
