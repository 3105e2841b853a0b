"""Image I/O for the SR pipeline: read LR images, convert SR tensors to uint8, write PNGs atomically.

Conventions follow the original sampler: RGB channel order, float32 in [0, 1] as
``uint8 / 255``, NCHW with N = 1; saving rounds like its ``tensor2img`` (clamp to
[0, 1], x255, round half to even, uint8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..reports import atomic_output

PathLike = Union[str, Path]

#: File suffixes treated as images when scanning a folder (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# modes whose samples are not 8-bit: converting them to RGB would clip or rescale
# silently, so they are refused instead of guessed at
_UNSUPPORTED_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_image_uint8(path: PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3]; alpha is dropped, grey is repeated.

    Raises :class:`InputError` naming the file when it is missing, not an image, truncated,
    or not 8-bit.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input image not found")
    try:
        with Image.open(path) as im:
            im.load()  # decode fully now: truncated files fail here, not later
            if im.mode in _UNSUPPORTED_MODES:
                raise InputError(f"{path}: image mode {im.mode!r} is not 8-bit; only 8-bit images are supported")
            rgb = im.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: cannot read as an image ({type(e).__name__}: {e})") from e
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{path}: decoded to shape {arr.shape}, expected [H, W, 3] with H, W >= 1")
    return arr


def uint8_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [0, 1], exactly ``uint8 / 255`` in float32."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"expected a uint8 [H, W, 3] image array, got {img.dtype} {img.shape}")
    x = img.astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def read_image(path: PathLike) -> torch.Tensor:
    """Read an image file as float32 RGB [1, 3, H, W] in [0, 1]."""
    return uint8_to_tensor(read_image_uint8(path))


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] or [3, H, W] float in [0, 1] -> uint8 [H, W, 3], rounded like ``tensor2img``:
    clamp to [0, 1] in float32, x255 in float32, round half to even, cast."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise InputError(f"expected one image, got a batch of shape {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise InputError(f"expected an image tensor [3, H, W], got shape {tuple(x.shape)}")
    a = x.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0).numpy().transpose(1, 2, 0)
    return np.round(a * np.float32(255.0)).astype(np.uint8)


def save_png(path: PathLike, img: Union[np.ndarray, torch.Tensor]) -> Path:
    """Write an RGB image as PNG atomically: a temp file in the same folder, then ``os.replace``.

    ``img``: uint8 [H, W, 3], or a float tensor in [0, 1] (converted by :func:`tensor_to_uint8`).
    On any failure the temp file is removed and the destination is left as it was.
    """
    path = Path(path)
    arr = tensor_to_uint8(img) if isinstance(img, torch.Tensor) else img
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"{path}: expected a uint8 [H, W, 3] image, got {arr.dtype} {arr.shape}")
    with atomic_output(path) as f:  # temp file beside it, user permissions, rename
        Image.fromarray(np.ascontiguousarray(arr)).save(f, format="PNG")
    return path
