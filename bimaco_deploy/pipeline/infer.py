"""Super-resolve one image file or every image of a folder: the library behind ``bimaco-deploy infer``.

Everything is validated before anything is written: every input must decode as an
8-bit image, output names must not collide and must not overwrite an input. Inside a
folder, every regular, non-hidden file is an input: a file that is not a readable
image is an error (naming all such files) rather than a silent skip, because a user
who points at a folder expects every picture in it to come out. Hidden files
(``.DS_Store`` ...) and sub-folders are ignored and listed in the report as skipped.
Outputs are PNGs written atomically (temp file + rename), so a failure never leaves a
partial file; outputs already finished before a failure stay (they are complete).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import InputError
from .images import read_image_uint8, save_png, uint8_to_tensor
from .onestep import OneStepSR
from .tiling import plan_tiles, super_resolve

PathLike = Union[str, Path]


@dataclass
class InferItem:
    """One processed image."""

    input: Path
    output: Path
    lr_size: Tuple[int, int]  # (H, W)
    sr_size: Tuple[int, int]
    seconds: float


@dataclass
class InferReport:
    """What :func:`infer` did."""

    items: List[InferItem] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)  # hidden files and sub-folders of an input folder
    seconds: float = 0.0


def _plan(inputs: Path, output: Path) -> Tuple[List[Tuple[Path, Path]], List[Path]]:
    """(input, output) pairs and skipped entries; raises InputError before anything is written."""
    if not inputs.exists():
        raise InputError(f"{inputs}: input not found")
    if inputs.is_file():
        out = output / f"{inputs.stem}.png" if output.is_dir() else output
        if out.suffix.lower() != ".png":
            raise InputError(f"{output}: output must be a .png file or an existing folder")
        pairs = [(inputs, out)]
        skipped: List[Path] = []
    elif inputs.is_dir():
        if output.exists() and not output.is_dir():
            raise InputError(f"{output}: input {inputs} is a folder, so the output must be a folder")
        entries = sorted(inputs.iterdir())
        files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
        skipped = [p for p in entries if p not in files]
        if not files:
            raise InputError(f"{inputs}: no files to process")
        pairs = [(p, output / f"{p.stem}.png") for p in files]
        by_name: Dict[str, List[str]] = {}
        for src, dst in pairs:
            by_name.setdefault(dst.name, []).append(src.name)
        clashes = [f"{', '.join(v)} -> {k}" for k, v in by_name.items() if len(v) > 1]
        if clashes:
            raise InputError(f"{inputs}: several inputs would write the same output: {'; '.join(clashes)}")
    else:
        raise InputError(f"{inputs}: not a file or folder")
    for src, dst in pairs:
        if dst.exists() and dst.resolve() == src.resolve():
            raise InputError(f"{dst}: output would overwrite its own input; choose another output")
    return pairs, skipped


def check_inputs(inputs: PathLike, output: PathLike) -> List[Tuple[Path, Path]]:
    """The (input, output) pairs :func:`infer` would process; raises :class:`InputError` for any
    problem it would refuse (missing or unreadable inputs, colliding outputs). Cheap enough to
    call before loading models."""
    pairs, _ = _plan(Path(inputs), Path(output))
    _validate(pairs)
    return pairs


def _validate(pairs: List[Tuple[Path, Path]]) -> None:
    bad = []
    for src, _ in pairs:
        try:
            read_image_uint8(src)
        except InputError as e:
            bad.append(str(e))
    if bad:
        raise InputError(f"{len(bad)} of {len(pairs)} inputs cannot be read, nothing was written:\n  " + "\n  ".join(bad))


#: One image through super-resolution: uint8 LR [H, W, 3] in, SR out (a float tensor in [0, 1],
#: [1, 3, sf*H, sf*W], or uint8 [sf*H, sf*W, 3]).
SRFn = Callable[[np.ndarray], Union[np.ndarray, torch.Tensor]]


def infer(
    pipeline: OneStepSR,
    inputs: PathLike,
    output: PathLike,
    *,
    seed: int = 0,
    tile: int = 256,
    stride: Optional[int] = None,
    progress: bool = True,
) -> InferReport:
    """Super-resolve ``inputs`` (an image file or a folder) into ``output`` (a .png file or folder).

    A file input writes ``output`` (or ``output/<stem>.png`` when ``output`` is a folder);
    a folder input writes ``output/<stem>.png`` for each file, in sorted order. Every
    image uses noise from ``seed`` (see :func:`~bimaco_deploy.runtime.tiling.tile_generator`),
    so a result does not depend on which other images are processed. Images larger than
    ``tile`` LR pixels on a side are tiled (``stride`` default: the original's).
    Raises :class:`InputError` (naming the files) before writing anything when an input is
    unreadable or the outputs would collide.
    """
    plan_tiles(1, 1, tile, stride)  # an invalid tiling fails here, before anything is written

    def sr_image(img: np.ndarray) -> torch.Tensor:
        return super_resolve(pipeline, uint8_to_tensor(img), seed=seed, tile=tile, stride=stride)

    return infer_files(sr_image, inputs, output, progress=progress)


def infer_files(sr_image: SRFn, inputs: PathLike, output: PathLike, *, progress: bool = True) -> InferReport:
    """The file side of :func:`infer` around any ``sr_image`` (a local pipeline, or a server):
    plan and validate every input before writing anything, show progress, write PNGs atomically."""
    start = time.perf_counter()
    inputs, output = Path(inputs), Path(output)
    pairs, skipped = _plan(inputs, output)
    _validate(pairs)
    report = InferReport(skipped=skipped)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("super-resolving", total=len(pairs))
        for src, dst in pairs:
            bar.update(task, description=f"super-resolving {src.name}")
            t0 = time.perf_counter()
            lr = read_image_uint8(src)
            sr = sr_image(lr)
            save_png(dst, sr)
            sr_size = tuple(sr.shape[-2:]) if isinstance(sr, torch.Tensor) else tuple(sr.shape[:2])
            report.items.append(InferItem(src, dst, tuple(lr.shape[:2]), sr_size, time.perf_counter() - t0))
            bar.advance(task)
    report.seconds = time.perf_counter() - start
    return report
