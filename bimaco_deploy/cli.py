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

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def _fail(err: BaseException) -> "typer.Exit":
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(code=2)


# Commands are registered below, one small function each. Keep them thin: parse,
# call the library, print.

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
