"""Writing outputs: the one output rule of every command, and atomic writes (never a half-written file).

The rule (:data:`OUTPUT_RULE`, printed in every command's ``--help``):

* every output path (``--out``, ``--json``, images, folders) is checked before any work
  starts: a path that cannot be written fails at once, naming the option and the path;
* an existing output file or folder is replaced only with ``--force``;
* a missing parent folder is created, and the command says so;
* a file output that is a folder, or a folder output named like a file, is an error.

Files and folders get the permissions a plain ``open()`` / ``mkdir`` would give them
(``0666`` / ``0777`` less the umask), not the ``0600`` / ``0700`` of temporary files:
artifacts are often read by another user (a TensorRT or Triton container).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Sequence, Union

from .errors import OutputError

PathLike = Union[str, Path]

OUTPUT_RULE = (
    "Outputs: every output path is checked before the work starts; an existing output is replaced only "
    "with --force; a missing parent folder is created (and said so); a folder where a file is expected, "
    "or a file name where a folder is expected, is an error."
)

#: Suffixes that name a file: a folder output called like this is refused as a likely mistake.
FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".json", ".onnx", ".plan", ".engine",
                 ".pth", ".pt", ".npz", ".txt", ".yaml", ".yml")


def umask() -> int:
    """The process umask (read without changing it for longer than a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def user_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file."""
    return 0o666 & ~umask()


def user_dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder."""
    return 0o777 & ~umask()


# --------------------------------------------------------------------------- the output rule


@dataclass
class OutputCheck:
    """What :func:`check_output` found: the path, and the folders that writing it will create."""

    path: Path
    option: str
    kind: str  # "file" or "dir"
    exists: bool
    missing_parents: List[Path] = field(default_factory=list)

    def note(self) -> Optional[str]:
        """A line for the user when folders will be created, else None."""
        if not self.missing_parents:
            return None
        return f"{self.option} {self.path}: folder {self.missing_parents[-1]} does not exist; it will be created"


def _probe_writable(folder: Path, option: str, target: Path) -> None:
    """Create and remove a temporary file in ``folder``: the only test that also holds for root,
    read-only mounts and /proc (``os.access`` says yes to root everywhere)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bimaco-write-test.", dir=folder)
    except OSError as e:
        raise OutputError(f"{option} {target}: cannot write in folder {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output(
    path: PathLike,
    *,
    option: str,
    kind: str = "file",
    force: bool = False,
    suffixes: Optional[Sequence[str]] = None,
    existing_dir: str = "refuse",
) -> OutputCheck:
    """Check that ``path`` can be written under :data:`OUTPUT_RULE`, before any work starts.

    ``option`` names the path in messages (``--json``, ``--out``, ``OUTPUT``). ``kind``:
    "file" or "dir". ``suffixes``: allowed file suffixes (lower case). ``existing_dir``
    for a folder output: "refuse" (replacing the folder needs ``force``) or "merge" (an
    existing folder is fine; files inside it are checked by the caller with
    :func:`check_output`). Nothing is created; raises :class:`OutputError` naming the
    option, the path and what was expected.
    """
    p = Path(path)
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    exists = p.exists()
    if kind == "file":
        if p.is_dir():
            example = p / ("out" + (suffixes[0] if suffixes else ".json"))
            raise OutputError(f"{option} {p}: is a folder; give a file path (for example {example})")
        if suffixes and p.suffix.lower() not in suffixes:
            raise OutputError(f"{option} {p}: expected a file name ending in {' or '.join(suffixes)}")
        if exists and not force:
            raise OutputError(f"{option} {p}: already exists; pass --force to replace it")
    else:
        if exists and not p.is_dir():
            raise OutputError(f"{option} {p}: exists and is not a folder")
        if not exists and p.suffix.lower() in FILE_SUFFIXES:
            raise OutputError(f"{option} {p}: a folder is written here, but the name looks like a file ({p.suffix}); "
                              "give a folder name")
        if exists and existing_dir == "refuse" and not force:
            raise OutputError(f"{option} {p}: folder already exists; pass --force to replace it")
    # the nearest folder that exists must be a folder we can write in
    anchor = p if (kind == "dir" and exists) else p.parent
    missing: List[Path] = []
    while not anchor.exists():
        missing.append(anchor)
        if anchor.parent == anchor:
            break
        anchor = anchor.parent
    if anchor.exists() and not anchor.is_dir():
        raise OutputError(f"{option} {p}: {anchor} is a file, not a folder")
    _probe_writable(anchor, option, p)
    return OutputCheck(p, option, kind, exists, list(reversed(missing)))


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_output(path: PathLike, *, mode: Optional[int] = None, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file object whose content appears at ``path`` only if the block succeeds.

    Written to a temporary file beside ``path`` (parents created), flushed, given the user's
    normal permissions (``mode``, default 0666 less the umask) and renamed into place.
    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        # mkstemp makes the file 0600; give the result the permissions a plain open() would
        os.chmod(tmp, user_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def make_dirs(path: PathLike) -> Path:
    """``mkdir -p`` with the user's normal folder permissions."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_temp_dir(parent: PathLike, prefix: str) -> Path:
    """A new temporary folder inside ``parent`` with the user's normal permissions (mkdtemp gives 0700),
    for outputs that are assembled there and renamed into place."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=make_dirs(parent)))
    os.chmod(tmp, user_dir_mode())
    return tmp


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_output(path) as f:
        f.write(data)


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """JSON (indented, numpy/Path values stringified) written atomically."""
    text = json.dumps(obj, indent=2, default=_jsonable)
    write_bytes_atomic(path, (text + "\n").encode())


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)
