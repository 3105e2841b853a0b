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
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

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


#: Torch's legacy (pre-zip) format opens with a pickle of this number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

#: (leading bytes, what the file is) for formats users mistake for checkpoints.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x7fELF", "an executable or shared library"),
    (b"%PDF", "a PDF document"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
)

#: Globals a torch state-dict pickle may reference (torch's own, and the containers it pickles);
#: anything else names what the file really holds.
_STATE_DICT_GLOBALS = ("collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                       "builtins.slice", "_codecs.encode")

#: Advice torch appends to its loading errors that must never reach the user: turning safe
#: loading off would run code from the file.
_TORCH_ADVICE = ("weights_only", "re-running", "re-run", "file an issue", "documentation", "trusted source",
                 "safe_globals", "add_safe_globals", "allowlist", "https://")

_RESAVE = "re-save it from Python with torch.save(model.state_dict(), path)"


def _first_sentence_without_advice(text: str) -> str:
    """Torch's message without its advice: whole sentences only, never cut mid-sentence."""
    import re as _re

    parts = [p.strip() for p in _re.split(r"(?<=[.!?:])\s+|\n+", text) if p.strip()]
    keep = [p for p in parts if not any(a in p.lower() for a in _TORCH_ADVICE)]
    keep = [p for p in keep if not p.lower().startswith(("weightsunpickler error", "please"))]
    return " ".join(keep[:2]).rstrip(":") if keep else ""


def pickle_globals(data: bytes) -> List[str]:
    """The classes and functions a pickle would import (``module.name``), read without running it.

    Raises ValueError when ``data`` is not a complete pickle (truncated, or not a pickle).
    """
    import pickletools

    found: List[str] = []
    recent: List[object] = []  # values the last opcodes pushed (strings kept, others None)
    memo: Dict[object, object] = {}
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
            recent.append(None)
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                      "BINSTRING", "STRING"):
            recent.append(arg if isinstance(arg, str) else str(arg))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(arg))
        elif name == "STACK_GLOBAL":
            mod, qual = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            found.append(f"{mod}.{qual}" if isinstance(mod, str) and isinstance(qual, str) else "<unknown>")
            recent.append(None)
        elif op.stack_after:
            recent.append(None)
        del recent[:-4]
    # protocol <= 2 pickles use the Python 2 module names
    renamed = {"__builtin__": "builtins", "copy_reg": "copyreg"}
    found = [renamed.get(g.split(".", 1)[0], g.split(".", 1)[0]) + g[len(g.split(".", 1)[0]):] for g in found]
    return list(dict.fromkeys(found))


def _foreign_classes(globals_: Sequence[str]) -> List[str]:
    return [g for g in globals_ if g.split(".", 1)[0] != "torch" and g not in _STATE_DICT_GLOBALS]


def _describe_text(head: bytes) -> Optional[str]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text or sum(c.isprintable() or c in "\r\n\t" for c in text) < 0.95 * len(text):
        return None
    first = text.lstrip()[:40].splitlines()[0] if text.strip() else ""
    if text.lstrip().startswith(("{", "[")):
        return f"a JSON or other text file (starts with {first!r})"
    return f"a text file (starts with {first!r})"


def _is_old_protocol_pickle(head: bytes) -> bool:
    """A complete protocol 0/1 pickle (no PROTO opcode) at the start of ``head``."""
    import pickletools

    if not head or head[:1] not in b"(]}cKJIMNFSVXUTGhjqrp.)":
        return False
    try:
        for op, _arg, _pos in pickletools.genops(head):
            pass
    except ValueError:
        return False
    return True


def _is_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < (1 << 28) and head[8:9] == b"{"


def _zip_problem(path: Path, size: int) -> Optional[str]:
    """Why a zip-format file is not a readable torch checkpoint, or None when it looks like one."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            pickles = [i for i in infos if i.filename.endswith("data.pkl")]
            if not pickles:
                shown = ", ".join(i.filename for i in infos[:5]) or "nothing"
                return f"not a torch checkpoint: a zip archive without data.pkl (it holds {shown})"
            for info in infos:
                if info.header_offset + info.compress_size > size:
                    return (f"truncated: the zip archive's entry {info.filename} runs past the end of the file "
                            f"({size:,} bytes); a partial download or copy?")
            data = zf.read(pickles[0])
    except zipfile.BadZipFile:
        return (f"truncated or corrupt: it starts like a torch checkpoint (a zip archive) but its end is missing "
                f"({size:,} bytes); a partial download or copy?")
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        return f"truncated or corrupt: the zip archive cannot be read ({type(e).__name__}: {e})"
    try:
        foreign = _foreign_classes(pickle_globals(data))
    except ValueError:
        return "truncated or corrupt: its data.pkl is not a complete pickle"
    if foreign:
        return (f"not a tensor state dict: a torch file whose pickle holds objects of class {', '.join(foreign[:5])}; "
                f"refused: checkpoints are read without "
                f"running code from the file, so they may hold only tensors and plain containers ({_RESAVE})")
    return None


def _raw_pickle_problem(path: Path, head: bytes, size: int) -> Optional[str]:
    """Why a file that starts like a pickle is not a torch checkpoint (None for torch's legacy format)."""
    import pickletools

    bad = "not a torch checkpoint: it starts like a Python pickle but is truncated or not a pickle at all"
    try:
        ops = list(pickletools.genops(head))  # the first pickle only: genops stops at STOP
    except ValueError:
        if size <= len(head):
            return bad
        ops = []
    values = [arg for op, arg, _ in ops if op.name in ("LONG1", "LONG4", "LONG", "INT")]
    if values[:1] == [_TORCH_LEGACY_MAGIC]:
        return None  # torch's legacy (pre-1.6) format: several pickles, the first is this number
    if size > (256 << 20):
        return "not a torch checkpoint: a large Python pickle (torch.save writes a zip archive)"
    try:
        foreign = _foreign_classes(pickle_globals(head if size <= len(head) else path.read_bytes()))
    except ValueError:
        return bad
    if foreign:
        return (f"not a tensor state dict: a Python pickle (not a torch checkpoint) of objects of class "
                f"{', '.join(foreign[:5])}; refused: checkpoints are read without running code from the file ({_RESAVE})")
    return "not a torch checkpoint: a plain Python pickle without tensors (torch.save writes a zip archive)"


def describe_file_problem(path: PathLike) -> Optional[str]:
    """What is wrong with ``path`` as a torch checkpoint, read from its bytes without unpickling;
    None when it looks like a torch checkpoint (torch.load then decides).

    Named cases: empty, truncated zip, zip without data.pkl, pickles of arbitrary classes
    (named), text/JSON, images and other well-known formats, safetensors, random bytes.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes), not a torch checkpoint"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_problem(path, size)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return _raw_pickle_problem(path, head, size)
    if _is_old_protocol_pickle(head):
        return _raw_pickle_problem(path, head, size)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"not a torch checkpoint: it is {what}"
    if _is_safetensors(head):
        return "not a torch checkpoint: it is a safetensors file (this tool reads torch.save state dicts)"
    if head[:1] == b"PK":
        return "not a torch checkpoint: it is a zip-like archive of another kind"
    text = _describe_text(head[:4096])
    if text:
        return f"not a torch checkpoint: it is {text}"
    shown = " ".join(f"{b:02x}" for b in head[:8])
    return f"not a torch checkpoint: unrecognised binary content (first bytes {shown})"


def check_checkpoint_file(path: PathLike) -> Path:
    """Refuse, naming the file and what it is, anything that is not a readable torch checkpoint
    (missing, a folder, empty, truncated, text, an image, a pickle of arbitrary objects ...);
    cheap: the bytes are inspected, nothing is unpickled. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file (.pth)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        problem = describe_file_problem(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return path


def read_state_dict(path: PathLike) -> StateDict:
    """Read a checkpoint file into a flat {key: tensor} dict (unwrapped, ``module.`` prefix stripped).

    The file is inspected first (without unpickling) so that every failure says what the file
    is: empty, truncated, not a torch checkpoint (text, JSON, an image, random bytes), or a
    pickle of objects of a named class, which safe loading refuses. No message ever suggests
    turning safe loading off.
    """
    path = check_checkpoint_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes are not for users
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _foreign_classes(list(dict.fromkeys(re.findall(r"GLOBAL ([\w.]+)", str(e)))))
        if not found:  # torch's own names, cut short: the pickle stream is damaged
            raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint (its pickle stream is damaged)") from None
        raise CheckpointError(
            f"{path}: not a tensor state dict: a pickle of objects of class {', '.join(found)}; refused: checkpoints "
            f"are read without running code from the file, so they may hold only tensors and plain containers "
            f"({_RESAVE})"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, IndexError... on corrupt input
        reason = _first_sentence_without_advice(str(e)) or type(e).__name__
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({reason})") from None
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
