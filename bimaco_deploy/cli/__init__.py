"""The ``bimaco-deploy`` command line: thin wrappers over library functions.

One module per command; each parses its options, checks its output paths, calls
library functions and prints their tables. Outcomes map to exit codes in one place
(:mod:`._app`): a :class:`~bimaco_deploy.errors.BimacoError` is one line and exit 2,
a failed parity threshold exit 1, anything else an internal error (exit 3, the trace
under ``--verbose``). The cli may import every room of the package; nothing imports it.
"""

from __future__ import annotations

from typing import List, Optional

from . import bench, build, check, doctor, export, infer, inspect, serve, triton_repo  # noqa: F401  (each registers its command)
from ._app import app

__all__ = ["app", "main"]


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point."""
    app(args=argv, standalone_mode=True)
