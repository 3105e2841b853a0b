"""Make the LR parity/calibration images in calib/images/ from photographs shipped with scikit-image.

Only images that are inside the scikit-image wheel are used (no downloads). Each is
centre-cropped to the target aspect ratio and reduced with Pillow's bicubic filter
(antialiased) to a small LR size, then written as an 8-bit RGB PNG (grey images are
repeated to three channels). Sizes are deliberately mixed: multiples of 64 (no padding),
and sides that the sampler reflect-pads (40, 48, 56, 72).

Usage:  python calib/make_calib.py [--out calib/images] [--check]
``--check`` regenerates into memory and fails if a committed file differs.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

#: name -> (skimage.data function name, (height, width) of the LR image)
IMAGES: Dict[str, Tuple[str, Tuple[int, int]]] = {
    "astronaut_64x64": ("astronaut", (64, 64)),
    "coffee_48x64": ("coffee", (48, 64)),
    "chelsea_40x48": ("chelsea", (40, 48)),
    "camera_64x64": ("camera", (64, 64)),
    "rocket_48x72": ("rocket", (48, 72)),
    "ihc_56x56": ("immunohistochemistry", (56, 56)),
}


def _load(name: str) -> np.ndarray:
    import skimage.data  # optional dependency: pip install -e .[calib]

    fn: Callable[[], np.ndarray] = getattr(skimage.data, name)
    img = fn()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype != np.uint8:
        raise SystemExit(f"skimage.data.{name} is {img.dtype}, expected uint8")
    return img[:, :, :3]


def make_lr(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Centre-crop ``img`` to the aspect ratio of ``size`` (H, W) and reduce it bicubically."""
    h, w = img.shape[:2]
    th, tw = size
    if h * tw > w * th:  # too tall
        ch, cw = w * th // tw, w
    else:
        ch, cw = h, h * tw // th
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(np.ascontiguousarray(img[top : top + ch, left : left + cw]))
    return np.asarray(crop.resize((tw, th), Image.Resampling.BICUBIC), dtype=np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    total, mismatched = 0, []
    for stem, (source, size) in IMAGES.items():
        data = png_bytes(make_lr(_load(source), size))
        path = args.out / f"{stem}.png"
        total += len(data)
        if args.check:
            if not path.is_file() or not np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(io.BytesIO(data)))):
                mismatched.append(path.name)
        else:
            tmp = path.with_suffix(".png.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            print(f"{path}  {size[0]}x{size[1]}  {len(data)} bytes")
    print(f"{len(IMAGES)} images, {total} bytes")
    if mismatched:
        print("differ from the committed files:", ", ".join(mismatched), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
