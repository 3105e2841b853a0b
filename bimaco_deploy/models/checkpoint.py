"""Reading original-format checkpoints safely and loading them strictly.

Accepted layouts (as the original's ``Sampler.load_model``): a raw state dict or one
wrapped under ``'state_dict'``, with or without a ``module.`` prefix. Files are read
with ``torch.load(weights_only=True)``: a pickle that holds anything but tensors and
plain containers is refused, never executed.

Loading is strict: missing, unexpected and mis-shaped keys are errors that list the
keys and the expected shapes. Entries the original stores but never reads (dead
entries) are accepted, dropped and listed in a debug log.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
StateDict = Dict[str, torch.Tensor]

#: Entries that BiMaCoSR checkpoints carry but the forward never reads (spec g.6).
DEAD_KEY_PATTERNS: Tuple[str, ...] = (
    r"\.move0\.bias$",
    r"\.channel_threshold$",
    r"\.attn_mask$",
)

_LIST_LIMIT = 10


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    if len(items) > _LIST_LIMIT:
        shown += f", and {len(items) - _LIST_LIMIT} more"
    return shown


def read_state_dict(path: PathLike) -> StateDict:
    """Read a checkpoint file into a flat {key: tensor} dict (unwrapped, ``module.`` prefix stripped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: not a tensor state dict: it holds Python objects that safe loading (weights_only=True) "
            f"refuses to execute ({str(e).splitlines()[0][:200]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot read checkpoint: the file is truncated or corrupt ({str(e).splitlines()[0][:200]})"
        ) from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a state dict of tensors; these entries are not tensors: {_listing(bad)}")
    if not obj:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    state = dict(obj)
    if next(iter(state)).startswith("module."):
        state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return state


def _is_dead(key: str, extra_dead: Iterable[str]) -> bool:
    return any(re.search(p, key) for p in DEAD_KEY_PATTERNS) or key in extra_dead


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: PathLike,
    dead_keys: Iterable[str] = (),
    what: str = "model",
) -> List[str]:
    """Copy ``state`` into ``module``; every key must match by name and shape.

    ``dead_keys`` are exact names (besides :data:`DEAD_KEY_PATTERNS`) that are accepted
    and ignored. Returns the dropped dead keys.
    """
    expected = module.state_dict()
    dead_set = set(dead_keys)
    dropped = sorted(k for k in state if k not in expected and _is_dead(k, dead_set))
    unexpected = sorted(k for k in state if k not in expected and k not in dropped)
    missing = sorted(k for k in expected if k not in state)
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)}, {what} expects {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} tensors have the wrong shape: {_listing(mismatched)}")
    if missing:
        shapes = [f"{k} {tuple(expected[k].shape)}" for k in missing]
        problems.append(f"{len(missing)} keys the {what} needs are missing: {_listing(shapes)}")
    if unexpected:
        shapes = [f"{k} {tuple(state[k].shape)}" for k in unexpected]
        problems.append(f"{len(unexpected)} keys are unknown to the {what}: {_listing(shapes)}")
    if problems:
        raise CheckpointError(
            f"{source}: checkpoint does not fit the {what} built from the config "
            f"(is it for another config?): " + "; ".join(problems)
        )
    with torch.no_grad():
        for k, t in expected.items():
            src = state[k]
            if t.dtype.is_floating_point and not src.dtype.is_floating_point:
                raise CheckpointError(f"{source}: {k} has dtype {src.dtype}, the {what} expects a float tensor")
            t.copy_(src.to(t.dtype))
    if dropped:
        log.debug("%s: ignored %d dead entries the forward never reads: %s", source, len(dropped), ", ".join(dropped))
    return dropped
