"""Errors that users see.

Every failure caused by user input (a file, a config, a shape) raises a
:class:`BimacoError` whose message names the offending file, layer or shape and
what was expected. The CLI prints the message and exits non-zero instead of a
traceback.
"""

from __future__ import annotations


class BimacoError(Exception):
    """A user-facing error with a message that says what is wrong and where."""


class ConfigError(BimacoError):
    """A config file is missing, unreadable, or lacks a field."""


class CheckpointError(BimacoError):
    """A checkpoint cannot be read, or does not fit the model built from the config."""


class InputError(BimacoError):
    """An input image or tensor cannot be processed (unreadable, wrong shape or size)."""


class ArtifactError(BimacoError):
    """An exported artifact directory is missing, incomplete or inconsistent."""


class BackendUnavailable(BimacoError):
    """A backend needs a library, compiler or device that this machine lacks."""


class ServerError(BimacoError):
    """An inference server cannot be started or reached, or refused a request (its message is shown)."""
