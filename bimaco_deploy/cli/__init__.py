"""The ``bimaco-deploy`` command line: thin wrappers over library functions.

One module per command; each parses its options, calls one library function, prints
its table and exits non-zero on failure. A :class:`~bimaco_deploy.errors.BimacoError`
is shown as a one-line message, not a traceback. The cli may import every room of the
package; nothing imports it.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from ..errors import BimacoError
from . import bench, build, check, doctor, export, infer, inspect, serve, triton_repo  # noqa: F401  (each registers its command)
from ._app import app

__all__ = ["app", "main"]


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except BimacoError as err:  # pragma: no cover - typer handles most exits itself
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
