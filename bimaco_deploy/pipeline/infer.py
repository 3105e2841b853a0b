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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import InputError, OutOfMemory, OutputError, allocation_summary, is_out_of_memory
from ..progress import Progress
from ..reports import check_output, write_json_atomic
from .images import read_image_uint8, save_png, uint8_to_tensor
from .memory import PeakRSS
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
    tiles: int = 1
    peak_rss_mib: float = 0.0  # resident memory peak of the process while this image ran


@dataclass
class InferReport:
    """What :func:`infer` did."""

    items: List[InferItem] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)  # hidden files and sub-folders of an input folder
    seconds: float = 0.0
    run: Dict[str, Any] = field(default_factory=dict)  # backend, weights, autoencoder ... (``run_info``)
    status: str = "running"  # "running", "done", or what stopped it

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: the run, every image (paths, sizes, seconds, tiles), skipped entries."""
        return {
            "status": self.status, "seconds": self.seconds, **self.run,
            "images": [{**asdict(i), "input": str(i.input), "output": str(i.output)} for i in self.items],
            "skipped": [str(p) for p in self.skipped],
        }


def _plan(inputs: Path, output: Path, force: bool = False) -> Tuple[List[Tuple[Path, Path]], List[Path]]:
    """(input, output) pairs and skipped entries; raises InputError / OutputError before anything is written."""
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
    # the output rule (reports.OUTPUT_RULE): writable, no silent overwrite, file vs folder
    if inputs.is_dir():
        check_output(output, option="OUTPUT", kind="dir", existing_dir="merge")
    else:
        check_output(pairs[0][1], option="OUTPUT", kind="file", force=force, suffixes=(".png",))
    existing = [dst for _, dst in pairs if dst.exists()]
    if existing and not force:
        shown = ", ".join(p.name for p in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise OutputError(f"OUTPUT {output}: {len(existing)} output(s) already exist ({shown}); "
                          "pass --force to replace them")
    return pairs, skipped


def check_inputs(inputs: PathLike, output: PathLike, *, force: bool = False) -> List[Tuple[Path, Path]]:
    """The (input, output) pairs :func:`infer` would process; raises :class:`InputError` for any
    problem it would refuse (missing or unreadable inputs, colliding outputs) and :class:`OutputError`
    for outputs it cannot write (not writable, existing without ``force``). Cheap enough to call
    before loading models."""
    pairs, _ = _plan(Path(inputs), Path(output), force)
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


#: One image through super-resolution: ``sr_image(lr, progress, src) -> (sr, tiles)`` for a uint8 LR
#: image [H, W, 3] read from file ``src``; ``sr`` a float tensor in [0, 1] ([1, 3, sf*H, sf*W]) or
#: uint8 [sf*H, sf*W, 3], ``tiles`` how many tiles it took (it may show their progress on ``progress``).
SRFn = Callable[[np.ndarray, Progress, Path], Tuple[Union[np.ndarray, torch.Tensor], int]]


def local_sr(pipeline: OneStepSR, *, seed: int = 0, tile: int = 256, stride: Optional[int] = None,
             vq_batch: Optional[int] = None) -> SRFn:
    """The :data:`SRFn` of a local pipeline: tiled when needed (``vq_batch`` tiles per autoencoder
    call), per-tile progress for a large image, and a failed allocation turned into
    :class:`OutOfMemory` naming a smaller ``tile`` to try."""
    plan_tiles(1, 1, tile, stride)  # an invalid tiling fails here, before anything is written

    def sr_image(img: np.ndarray, prog: Progress, src: Path) -> Tuple[torch.Tensor, int]:
        lr = uint8_to_tensor(img)
        h, w = lr.shape[-2:]
        n_tiles = len(plan_tiles(h, w, tile, stride))
        try:
            if n_tiles > 1:
                with prog.task(f"  tiles of {src.name}", total=n_tiles, unit="tiles") as tt:
                    sr = super_resolve(pipeline, lr, seed=seed, tile=tile, stride=stride, vq_batch=vq_batch,
                                       on_tile=lambda done, total: tt.advance())
            else:
                sr = super_resolve(pipeline, lr, seed=seed, tile=tile, stride=stride)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            smaller = max(16, min(tile, max(h, w)) // 2)
            raise OutOfMemory(
                f"{src}: out of memory super-resolving this {h}x{w} image in LR tiles of up to {tile} px "
                f"({allocation_summary(e)}); use a smaller --tile (for example --tile {smaller}), or free memory"
            ) from None
        return sr, n_tiles

    return sr_image


def infer(
    pipeline: OneStepSR,
    inputs: PathLike,
    output: PathLike,
    *,
    seed: int = 0,
    tile: int = 256,
    stride: Optional[int] = None,
    progress: Union[bool, Progress, None] = True,
    force: bool = False,
    on_item: Optional[Callable[[InferItem], None]] = None,
    report_path: Optional[PathLike] = None,
    run_info: Optional[Dict[str, Any]] = None,
    vq_batch: Optional[int] = None,
) -> InferReport:
    """Super-resolve ``inputs`` (an image file or a folder) into ``output`` (a .png file or folder).

    A file input writes ``output`` (or ``output/<stem>.png`` when ``output`` is a folder);
    a folder input writes ``output/<stem>.png`` for each file, in sorted order. Every
    image uses noise from ``seed`` (see :func:`~bimaco_deploy.pipeline.tiling.tile_generator`),
    so a result does not depend on which other images are processed. Images larger than
    ``tile`` LR pixels on a side are tiled (``stride`` default: the original's), with a progress
    bar per tile and ``vq_batch`` tiles per autoencoder call (see :func:`~.tiling.super_resolve`);
    each item records its time and the process's peak resident memory while it ran.
    Raises :class:`InputError` (naming the files) before writing anything when an input is
    unreadable or the outputs would collide; existing outputs are replaced only with ``force``.

    ``progress``: True (a bar on a terminal, plain lines otherwise), a
    :class:`~bimaco_deploy.progress.Progress`, or False; large images also show per-tile
    progress with an ETA. ``on_item(item)`` is called as each image is written.
    ``report_path``: a JSON report (:meth:`InferReport.to_dict`, with ``run_info``) rewritten
    after every image, so it is current even if the run stops. Running out of memory raises
    :class:`OutOfMemory` naming the image and a smaller ``tile`` to try.
    """
    return infer_files(local_sr(pipeline, seed=seed, tile=tile, stride=stride, vq_batch=vq_batch), inputs, output, progress=progress,
                       force=force, on_item=on_item, report_path=report_path, run_info=run_info)


def infer_files(
    sr_image: SRFn,
    inputs: PathLike,
    output: PathLike,
    *,
    progress: Union[bool, Progress, None] = True,
    force: bool = False,
    on_item: Optional[Callable[[InferItem], None]] = None,
    report_path: Optional[PathLike] = None,
    run_info: Optional[Dict[str, Any]] = None,
) -> InferReport:
    """The file side of :func:`infer` around any ``sr_image`` (a local pipeline, or a server):
    plan and validate every input before writing anything, show progress, write PNGs atomically,
    keep the JSON report current."""
    start = time.perf_counter()
    inputs, output = Path(inputs), Path(output)
    pairs, skipped = _plan(inputs, output, force)
    if report_path is not None:
        check_output(report_path, option="--json", kind="file", force=True, suffixes=(".json",))
    _validate(pairs)
    report = InferReport(skipped=skipped, run=dict(run_info or {}))
    prog = Progress.of(progress)

    def save_report() -> None:
        if report_path is not None:
            report.seconds = time.perf_counter() - start
            write_json_atomic(report_path, report.to_dict())

    save_report()
    try:
        with prog.task("super-resolving", total=len(pairs), unit="images") as task:
            for src, dst in pairs:
                t0 = time.perf_counter()
                lr = read_image_uint8(src)
                with PeakRSS() as mem:
                    sr, n_tiles = sr_image(lr, prog, src)
                save_png(dst, sr)
                sr_size = tuple(sr.shape[-2:]) if isinstance(sr, torch.Tensor) else tuple(sr.shape[:2])
                item = InferItem(src, dst, tuple(lr.shape[:2]), sr_size, time.perf_counter() - t0, n_tiles,
                                 mem.peak_mib)
                report.items.append(item)
                task.advance(note=src.name)
                save_report()
                if on_item is not None:
                    on_item(item)
        report.status = "done"
    except BaseException as e:
        report.status = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}"
        save_report()
        raise
    report.seconds = time.perf_counter() - start
    save_report()
    return report
