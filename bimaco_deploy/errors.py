"""Errors that users see, and the exit codes every command shares.

Every failure caused by user input (a file, a config, a shape, an option) raises a
:class:`BimacoError` whose message names the offending file, option, layer or shape
and what was expected. The CLI prints the message as one line and exits with
:data:`EXIT_BAD_INPUT`; anything else that escapes a command is an internal error
(:data:`EXIT_INTERNAL`, the trace only under ``--verbose``).
"""

from __future__ import annotations

#: Exit codes of every ``bimaco-deploy`` command (see ``bimaco-deploy --help``).
EXIT_OK = 0
EXIT_PARITY_FAILED = 1  # `check`: a parity threshold failed (the report says which)
EXIT_BAD_INPUT = 2  # a BimacoError: bad file, option, shape, or a request this machine cannot serve
EXIT_INTERNAL = 3  # a bug: an exception that is not a BimacoError
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


class BimacoError(Exception):
    """A user-facing error with a message that says what is wrong and where."""


class ConfigError(BimacoError):
    """A config file is missing, unreadable, or lacks a field."""


class CheckpointError(BimacoError):
    """A checkpoint cannot be read, or does not fit the model built from the config."""


class InputError(BimacoError):
    """An input image or tensor cannot be processed (unreadable, wrong shape or size)."""


class ArtifactError(BimacoError):
    """An exported artifact directory is missing, incomplete or inconsistent, or does not fit its use."""


class BackendUnavailable(BimacoError):
    """A backend needs a library, compiler or device that this machine lacks."""


class ServerError(BimacoError):
    """An inference server cannot be started or reached, or refused a request (its message is shown)."""


class OutputError(ArtifactError):
    """An output (an artifact folder, an engine, a report, an image) cannot be written where asked:
    not writable, exists without ``--force``, a folder where a file is expected or the reverse."""


class OutOfMemory(BimacoError):
    """An allocation failed; the message says what was being done and what to change."""


_OOM_PHRASES = ("can't allocate memory", "cannot allocate memory", "failed to allocate memory", "out of memory",
                "bad_alloc", "bad allocation")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a failed allocation: Python's MemoryError (numpy's too), torch's CPU and
    CUDA allocator errors, ONNX Runtime's allocation failures. Judged from the type and message so
    that this room needs none of those libraries."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return any(p in text for p in _OOM_PHRASES)


def allocation_summary(err: BaseException) -> str:
    """A short account of a failed allocation ("an allocation of 16.0 GiB failed"), from the error."""
    import re

    m = re.search(r"allocate (\d+) bytes", str(err))
    if m:
        n = float(m.group(1))
        for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
            if n < 1024 or unit == "TiB":
                break
            n /= 1024
        return f"an allocation of {n:.1f} {unit} failed"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]
