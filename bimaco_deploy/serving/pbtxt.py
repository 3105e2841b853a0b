"""A small writer of protobuf text format, for Triton's ``config.pbtxt``.

Configs are built as plain Python values: a dict is a message, a list is a repeated field,
:class:`Enum` is an enum value (written bare), ``str`` is quoted, ``bool`` is ``true``/``false``,
numbers are written as they are. Map fields (``parameters``, ``input_map``) are repeated
messages with ``key`` and ``value``, which is how the text format writes maps. The tests
parse every generated file with Triton's own ``ModelConfig`` protobuf (shipped by
``tritonclient``), so a field or enum this writer gets wrong fails there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, List


@dataclass(frozen=True)
class Enum:
    """An enum value such as ``TYPE_FP32`` or ``KIND_CPU``."""

    name: str


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string literal is a valid text-format string literal
    raise TypeError(f"cannot write {type(value).__name__} {value!r} in protobuf text format")


def _field(key: str, value: Any, indent: int, out: List[str]) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        out.append(f"{pad}{key} {{")
        for k, v in value.items():
            _field(k, v, indent + 1, out)
        out.append(f"{pad}}}")
    elif isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            out.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            for v in value:
                _field(key, v, indent, out)
    elif value is not None:
        out.append(f"{pad}{key}: {_scalar(value)}")


def render(message: dict) -> str:
    """The text format of ``message`` (top-level fields in insertion order; None values left out)."""
    out: List[str] = []
    for key, value in message.items():
        _field(key, value, 0, out)
    return "\n".join(out) + "\n"
