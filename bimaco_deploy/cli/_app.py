"""The typer app every command module registers with, and what all commands share.

* One place maps outcomes to exit codes, for every command (:class:`_Group.invoke`):
  0 success, 1 a parity threshold failed (``check``), 2 bad input (a
  :class:`~bimaco_deploy.errors.BimacoError`: one line naming the file, option or shape),
  3 an internal error (one line; the trace only under ``--verbose``), 130 Ctrl-C (saying
  how far the work got). A failed allocation is bad input too: the message says what to
  make smaller.
* Global options: ``--version``, ``--verbose`` / ``--quiet``.
* The one output rule (:data:`~bimaco_deploy.reports.OUTPUT_RULE`), in every writing
  command's ``--help`` (:func:`command`) and enforced through :func:`outputs`.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on the click package
    from click import ClickException

from .. import progress as _progress
from ..errors import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, BimacoError, InputError, allocation_summary,
                      is_out_of_memory)
from ..reports import OUTPUT_RULE, OutputCheck, check_output

EXIT_CODES_HELP = ("Exit codes: 0 success; 1 a parity threshold failed (check); 2 bad input (the message names the "
                   "file, option or shape); 3 internal error (run with --verbose for the trace); 130 interrupted.")

#: What to make smaller when a command runs out of memory (the library says more where it knows more).
_MEMORY_HINTS: Dict[str, str] = {
    "infer": "a smaller --tile (for example --tile 128)",
    "check": "fewer or smaller --images, or --levels 1,2",
    "bench": "a smaller --size or --batch",
    "export": "closing other programs (export holds the model and its graphs in memory)",
    "build": "a smaller --max size or batch",
}


class Settings:
    """The global options of this invocation."""

    verbose: bool = False
    quiet: bool = False


settings = Settings()


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    # a library warning (a slow precision, a fallback) is one line like the CLI's own, not a source location
    _err(f"warning: {message}")


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _Group(TyperGroup):
    """The command group: runs a command and maps its outcome to the exit code."""

    def invoke(self, ctx: Any) -> Any:
        _progress.reset()
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except BimacoError as err:
            if settings.verbose:
                traceback.print_exc()
            _err(f"error: {err}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            done = _progress.interrupted_summary()
            _err(f"interrupted: {done or 'before any step finished'}. Outputs written so far are complete "
                 "(written atomically); nothing is half-written.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as err:  # everything else is ours: a bug, or memory
            if settings.verbose:
                traceback.print_exc()
            if is_out_of_memory(err):
                name = ctx.invoked_subcommand or ""
                hint = _MEMORY_HINTS.get(name, "smaller inputs")
                _err(f"error: out of memory ({allocation_summary(err)}); try {hint}, or free memory")
                raise typer.Exit(EXIT_BAD_INPUT) from None
            more = "" if settings.verbose else " (run with --verbose for the trace)"
            _err(f"internal error: {type(err).__name__}: {_one_line(err)[:300]}{more}; this is a bug, please report it")
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="Deploy binarized BiMaCoSR super-resolution models: inspect, export, check, infer, bench, build, doctor, serve, triton-repo. "
    + EXIT_CODES_HELP,
)


def _version(value: bool) -> None:
    if not value:
        return
    from .. import __version__
    from ..plugins import contract

    typer.echo(f"bimaco-deploy {__version__} (op contract v{contract.CONTRACT_VERSION}, "
               f"Python {sys.version.split()[0]})")
    raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Full traces on errors, and more detail."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes; results, warnings and errors only."),
) -> None:
    """Global options go before the command: bimaco-deploy --verbose infer ..."""
    if verbose and quiet:
        raise InputError("--verbose and --quiet exclude each other; give one")
    settings.verbose, settings.quiet = verbose, quiet


def command(*, writes: bool = True, **kwargs: Any) -> Callable:
    """``@app.command`` with the output rule in the command's help (``writes``: it writes files)."""
    epilog = OUTPUT_RULE if writes else "Writes no files."
    return app.command(epilog=epilog, **kwargs)


# --------------------------------------------------------------------------- messages


def note(text: str) -> None:
    """An informational line on stderr (hidden by --quiet)."""
    if not settings.quiet:
        _err(text)


def warn(text: str) -> None:
    """A warning on stderr (shown even with --quiet)."""
    _err(f"warning: {text}")


def progress() -> "_progress.Progress":
    """Progress display for this invocation: a bar on a terminal, plain lines otherwise, none with --quiet."""
    return _progress.Progress("quiet" if settings.quiet else "auto")


def outputs(*checks: Tuple[Optional[Any], Dict[str, Any]]) -> Dict[str, OutputCheck]:
    """Check every output path of a command before the work starts (:func:`~bimaco_deploy.reports.check_output`).

    Each argument is ``(path or None, check_output keyword arguments)``; None paths are
    skipped. Prints a note for folders that will be created. Returns the checks by option.
    """
    done: Dict[str, OutputCheck] = {}
    for path, kw in checks:
        if path is None:
            continue
        chk = check_output(path, **kw)
        done[kw["option"]] = chk
        line = chk.note()
        if line:
            note(f"note: {line}")
    return done


DEFAULT_CONFIG = "bimacosr"
CONFIG_HELP = ("Config YAML or built-in name (bimacosr, bimacosr-tiny, resshift-float); default: the config "
               "--artifacts were exported with, else bimacosr.")


def config_for(config: Optional[str], artifacts: Optional[Any] = None) -> Any:
    """The ModelConfig of a command: ``--config`` when given, else the one ``--artifacts`` carry in
    their metadata (said in a note), else the published config."""
    from pathlib import Path

    from ..export import provenance
    from ..export.artifacts import PORTABLE_FILE, UNET_FILE
    from ..models import load_config

    if config is not None:
        return load_config(config)
    if artifacts is not None:
        art = Path(artifacts)
        for f in ([art] if art.is_file() else [art / PORTABLE_FILE, art / UNET_FILE]):
            if f.is_file():
                meta = provenance.read_metadata(f)
                if meta.get("config_yaml"):
                    note(f"config: the one {f} was exported with ({meta.get('config_source')})")
                    return provenance.artifact_config(meta, f)
    return load_config(DEFAULT_CONFIG)


def fail(err: BaseException) -> "typer.Exit":
    """Print a user error as one line and exit 2 (bad input). Commands may also just raise the
    BimacoError: the group prints it the same way."""
    _err(f"error: {err}")
    return typer.Exit(code=EXIT_BAD_INPUT)


def parse_hw(text: str) -> Tuple[int, int]:
    """``H`` or ``HxW`` as (H, W)."""
    parts = text.lower().split("x")
    try:
        hw = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise InputError(f"size must be H or HxW, got {text!r}")
    return hw


#: --vq-precision on every command: one word, one meaning (bimaco_deploy.models.precision).
VQ_PRECISION_HELP = ("Autoencoder precision: fp32 | fp16 | bf16 | int8 (default: fp32 on CPU, fp16 on GPU). "
                     "int8: QDQ graphs calibrated on --calib (made and cached on first use); bf16: CPUs with native "
                     "bfloat16 (AVX512_BF16, AMX, ARM BF16).")
CALIB_HELP = "Calibration images for --vq-precision int8 (default: calib/calibration)."


def serving_vq_dtype(vq_precision: Optional[str], vq_dtype: Optional[str]) -> Optional[str]:
    """The serving stages' autoencoder dtype (float16 | float32 | None: the device default) from
    ``--vq-precision`` (fp32 | fp16), or the deprecated ``--vq-dtype`` (float32 | float16 | config)."""
    if vq_dtype is not None:
        if vq_precision is not None or vq_dtype not in ("float32", "float16", "config"):
            raise InputError(f"--vq-dtype is deprecated (float32 | float16); use --vq-precision fp32|fp16 (got {vq_dtype!r})")
        warn("--vq-dtype is deprecated; use --vq-precision")
        return None if vq_dtype == "config" else vq_dtype
    if vq_precision is None:
        return None
    words = {"fp32": "float32", "fp16": "float16"}
    if vq_precision not in words:
        raise InputError(f"--vq-precision {vq_precision!r}: the served torch autoencoder runs fp32 or fp16 "
                         "(int8 and bf16: run `infer` locally)")
    return words[vq_precision]
