"""Calibration images for the INT8 autoencoder, and the cache of the VQ graphs made from them.

* :func:`calibration_images` reads a calibration folder (default ``calib/calibration``,
  ``--calib DIR`` for your own) and refuses, before any work, an empty or missing folder,
  unreadable files and images too small to calibrate on, naming them.
* :func:`calibration_samples` turns them into encoder inputs exactly as inference feeds the
  encoder (LR in [-1, 1], reflect-padded to multiples of 64, 4x bicubic), cut into 64x64 LR
  crops first so that every sample has one shape and a large image does not dominate.
* :func:`ensure_vq_graphs` returns a folder with ``vq_encoder.onnx`` / ``vq_decoder.onnx``
  at a precision, making them once (calibrating for int8) and caching them under
  ``$BIMACO_CACHE`` (default ``$XDG_CACHE_HOME/bimaco-deploy`` or ``~/.cache/bimaco-deploy``),
  keyed by the autoencoder config, its weights, the calibration images, the quantization
  recipe and the tool versions: change any of them and the graphs are made again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ConfigError, InputError
from ..export.artifacts import VQ_DECODER_FILE, VQ_ENCODER_FILE
from ..models.config import ModelConfig
from .images import IMAGE_SUFFIXES, read_image_uint8, uint8_to_tensor
from .onestep import prepare_lr, upsample_bicubic

PathLike = Union[str, Path]
Say = Callable[[str], None]

#: The calibration set shipped with the repository (calib/README.md lists sources and licences).
DEFAULT_CALIB_DIR = Path(__file__).resolve().parents[2] / "calib" / "calibration"
#: Smallest LR side we calibrate on: below it, padding to 64 makes most of a sample reflection.
MIN_CALIB_SIDE = 32
#: LR crop size of a calibration sample (the pipeline's padding multiple: no padding at 64 px).
CALIB_CROP = 64
#: Written beside the cached graphs: what they were made from.
CACHE_INFO_FILE = "vq_graphs.json"


def calibration_images(folder: Optional[PathLike] = None) -> List[Tuple[Path, np.ndarray]]:
    """(path, uint8 [H, W, 3]) of every image in ``folder`` (default :data:`DEFAULT_CALIB_DIR`), sorted.

    Every regular, non-hidden file must be a readable 8-bit image of at least
    :data:`MIN_CALIB_SIDE` px a side; otherwise :class:`InputError` names them all.
    """
    folder = Path(folder) if folder is not None else DEFAULT_CALIB_DIR
    if not folder.exists():
        raise InputError(f"{folder}: calibration folder not found (--calib DIR: a folder of LR images)")
    if not folder.is_dir():
        raise InputError(f"{folder}: --calib expects a folder of LR images, not a file")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(
            f"{folder}: no images to calibrate on; expected LR images ({', '.join(IMAGE_SUFFIXES)}) "
            f"of at least {MIN_CALIB_SIDE} px a side"
        )
    out, bad, small = [], [], []
    for p in files:
        try:
            img = read_image_uint8(p)
        except InputError as e:
            bad.append(str(e))
            continue
        if min(img.shape[:2]) < MIN_CALIB_SIDE:
            small.append(f"{p.name} ({img.shape[0]}x{img.shape[1]})")
        out.append((p, img))
    if bad:
        raise InputError(f"{folder}: {len(bad)} of {len(files)} files cannot be read as images:\n  " + "\n  ".join(bad))
    if small:
        raise InputError(
            f"{folder}: too small to calibrate on (need at least {MIN_CALIB_SIDE} x {MIN_CALIB_SIDE} LR px, "
            f"padding to 64 would make most of the sample reflection): {', '.join(small)}"
        )
    return out


def _starts(length: int, size: int) -> List[int]:
    return [0] if length <= size else sorted({0, length - size} | set(range(0, length - size, size)))


def calibration_samples(images: Sequence[Tuple[Path, np.ndarray]], *, sf: int, pad_multiple: int = 64,
                        crop: int = CALIB_CROP) -> List[np.ndarray]:
    """Encoder inputs [1, 3, sf*crop, sf*crop] (float32) from calibration images, as inference makes them.

    Each image is cut into ``crop`` x ``crop`` LR crops (a grid starting at 0 and ending at
    the far edge; smaller sides are reflect-padded by the pipeline's own padding), then
    mapped to [-1, 1], padded and upsampled bicubically like :class:`~.onestep.OneStepSR`.
    """
    out = []
    for _path, img in images:
        lr = uint8_to_tensor(img)
        h, w = lr.shape[-2:]
        for top in _starts(h, crop):
            for left in _starts(w, crop):
                piece = lr[:, :, top : top + crop, left : left + crop]
                out.append(upsample_bicubic(prepare_lr(piece, pad_multiple), sf).numpy())
    return out


def calibration_digest(images: Sequence[Tuple[Path, np.ndarray]]) -> str:
    """sha256 over the names and pixels of a calibration set (its identity in cache keys)."""
    h = hashlib.sha256()
    for path, img in images:
        h.update(path.name.encode() + b"\0" + str(img.shape).encode() + img.tobytes())
    return h.hexdigest()


def cache_root() -> Path:
    """``$BIMACO_CACHE``, else ``$XDG_CACHE_HOME/bimaco-deploy``, else ``~/.cache/bimaco-deploy``."""
    if os.environ.get("BIMACO_CACHE"):
        return Path(os.environ["BIMACO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bimaco-deploy"


def _versions() -> dict:
    import onnx
    import onnxruntime

    from .. import __version__

    return {"bimaco_deploy": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _weights_digest(vq_ckpt: Optional[PathLike], seed: Optional[int], state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + np.ascontiguousarray(state[k]).tobytes())
    return ("checkpoint " if vq_ckpt is not None else f"random init (seed {seed or 0}) ") + h.hexdigest()


def ensure_vq_graphs(
    config: ModelConfig,
    vq_ckpt: Optional[PathLike],
    precision: str,
    *,
    seed: Optional[int] = None,
    calib: Optional[PathLike] = None,
    say: Optional[Say] = None,
    cache: Optional[PathLike] = None,
) -> Path:
    """A folder holding ``vq_encoder.onnx`` and ``vq_decoder.onnx`` at ``precision`` (fp32, fp16, int8).

    Made once and cached (see the module docstring); says where, and whether it is
    calibrating (minutes for the published model) or reusing a cached pair.
    """
    import onnx

    from ..export.layer_params import state_to_numpy
    from ..export.provenance import weights_metadata
    from ..export.vq import ONNX_VQ_PRECISIONS, vq_graphs
    from ..export.vq_quant import RECIPE
    from ..models.autoencoder import load_autoencoder

    say = say or (lambda _msg: None)
    if config.autoencoder is None:
        raise ConfigError(f"{config.source}: missing section 'autoencoder' (needed for super-resolution)")
    if precision not in ONNX_VQ_PRECISIONS:
        raise ConfigError(f"VQ graphs come in {', '.join(ONNX_VQ_PRECISIONS)}, not {precision!r}")
    images = calibration_images(calib) if precision == "int8" else []
    vq = load_autoencoder(config.autoencoder, vq_ckpt, seed=seed)
    state = state_to_numpy(vq.state_dict())
    del vq
    key_parts = {
        "precision": precision,
        "autoencoder": asdict(config.autoencoder),
        "weights": _weights_digest(vq_ckpt, seed, state),
        "versions": _versions(),
    }
    if precision == "int8":
        key_parts.update(calibration=calibration_digest(images), recipe=RECIPE)
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    root = Path(cache) if cache is not None else cache_root()
    folder = root / "vq" / f"{precision}-{key}"
    if (folder / VQ_ENCODER_FILE).is_file() and (folder / VQ_DECODER_FILE).is_file():
        say(f"using the cached {precision} VQ graphs in {folder}")
        return folder
    what = (f"calibrating INT8 VQ graphs on {len(images)} images of {Path(calib) if calib else DEFAULT_CALIB_DIR} "
            "(once; a few minutes for the published model)") if precision == "int8" else f"writing {precision} VQ graphs"
    say(f"{what}; caching them in {folder}")
    samples = calibration_samples(images, sf=config.diffusion.sf if config.diffusion else 4) if images else None
    enc, dec, info = vq_graphs(config.autoencoder, state, precision, samples=samples, source=str(vq_ckpt or "random init"),
                               say=say)
    for m in (enc, dec):  # say which weights they carry, as an export's graphs do (infer names them, warns on random)
        meta = {p.key: p.value for p in m.metadata_props}
        meta.update(weights_metadata(vq_ckpt, seed))
        del m.metadata_props[:]
        onnx.helper.set_model_props(m, meta)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        onnx.save_model(enc, str(tmp / VQ_ENCODER_FILE))
        onnx.save_model(dec, str(tmp / VQ_DECODER_FILE))
        record = {"key": key, "made_from": key_parts, "calibration_images": [p.name for p, _ in images], **info}
        (tmp / CACHE_INFO_FILE).write_text(json.dumps(record, indent=1, default=str))
        try:
            tmp.rename(folder)
        except OSError:  # another process made it meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


__all__ = ["CALIB_CROP", "DEFAULT_CALIB_DIR", "MIN_CALIB_SIDE", "cache_root", "calibration_digest", "calibration_images",
           "calibration_samples", "ensure_vq_graphs"]
