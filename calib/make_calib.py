"""Make the LR images of calib/ from photographs shipped with scikit-image.

Two sets:

* ``calib/images/``: the parity images of ``bimaco-deploy check`` (level 3). Sizes are
  deliberately mixed: multiples of 64 (no padding), and sides that the sampler reflect-pads
  (40, 48, 56, 72).
* ``calib/calibration/``: the calibration set of the INT8 autoencoder (``--vq-precision int8``):
  32 LR images, 64 to 96 px, cut from 16 photographs, micrographs, textures and scans of
  varied content (faces, fur, text, stars, tissue, coins, stone), each with its source and
  licence in calib/README.md.

Only images that are inside the scikit-image wheel are used (no downloads). Each is cut to a
region of its source (fractions of its height and width), centre-cropped to the target
aspect ratio and reduced with Pillow's bicubic filter (antialiased) to a small LR size, then
written as an 8-bit RGB PNG (grey images are repeated to three channels).

Usage:  python calib/make_calib.py [--check]
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


#: Full frame of the source.
WHOLE = (0.0, 0.0, 1.0, 1.0)

#: name -> (skimage.data function name, region (top, left, bottom, right) as fractions, (H, W) LR size)
CALIBRATION: Dict[str, Tuple[str, Tuple[float, float, float, float], Tuple[int, int]]] = {
    "astronaut_whole": ("astronaut", WHOLE, (64, 64)),
    "astronaut_face": ("astronaut", (0.05, 0.3, 0.45, 0.7), (64, 64)),
    "astronaut_suit_96": ("astronaut", (0.4, 0.0, 1.0, 0.6), (96, 96)),
    "camera_whole": ("camera", WHOLE, (64, 64)),
    "camera_operator": ("camera", (0.05, 0.2, 0.65, 0.8), (64, 64)),
    "chelsea_whole": ("chelsea", WHOLE, (64, 64)),
    "chelsea_face": ("chelsea", (0.0, 0.25, 0.75, 0.75), (64, 64)),
    "coffee_whole_64x96": ("coffee", WHOLE, (64, 96)),
    "coffee_cup": ("coffee", (0.1, 0.2, 0.9, 0.75), (64, 64)),
    "rocket_whole_64x96": ("rocket", WHOLE, (64, 96)),
    "rocket_launch": ("rocket", (0.0, 0.35, 1.0, 0.75), (96, 64)),
    "ihc_whole": ("immunohistochemistry", WHOLE, (64, 64)),
    "ihc_detail": ("immunohistochemistry", (0.5, 0.5, 0.8, 0.8), (64, 64)),
    "hubble_whole_96": ("hubble_deep_field", WHOLE, (96, 96)),
    "hubble_galaxy": ("hubble_deep_field", (0.55, 0.05, 0.85, 0.35), (64, 64)),
    "hubble_field": ("hubble_deep_field", (0.1, 0.6, 0.4, 0.9), (64, 64)),
    "retina_whole": ("retina", WHOLE, (64, 64)),
    "retina_vessels": ("retina", (0.3, 0.45, 0.55, 0.7), (64, 64)),
    "brick": ("brick", (0.0, 0.0, 0.5, 0.5), (64, 64)),
    "grass": ("grass", (0.25, 0.25, 0.75, 0.75), (64, 64)),
    "gravel": ("gravel", (0.0, 0.5, 0.5, 1.0), (64, 64)),
    "coins_whole": ("coins", WHOLE, (64, 80)),
    "coins_detail": ("coins", (0.0, 0.0, 0.5, 0.5), (64, 64)),
    "clock_whole": ("clock", WHOLE, (64, 80)),
    "text_line": ("text", (0.0, 0.0, 1.0, 0.5), (64, 80)),
    "cell_whole": ("cell", WHOLE, (64, 64)),
    "cell_detail": ("cell", (0.3, 0.3, 0.7, 0.7), (64, 64)),
    "microaneurysms": ("microaneurysms", WHOLE, (64, 64)),
    "astronaut_flag": ("astronaut", (0.0, 0.0, 0.35, 0.35), (64, 64)),
    "chelsea_fur_96": ("chelsea", (0.3, 0.0, 1.0, 0.5), (96, 96)),
    "coffee_saucer": ("coffee", (0.55, 0.05, 1.0, 0.55), (64, 64)),
    "ihc_edge_96x64": ("immunohistochemistry", (0.0, 0.0, 0.6, 0.4), (96, 64)),
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


def region(img: np.ndarray, box: Tuple[float, float, float, float]) -> np.ndarray:
    """The part of ``img`` inside ``box`` = (top, left, bottom, right) as fractions of its size."""
    h, w = img.shape[:2]
    t, l, b, r = box
    return img[int(round(t * h)) : int(round(b * h)), int(round(l * w)) : int(round(r * w))]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _jobs(root: Path) -> List[Tuple[Path, Callable[[], np.ndarray]]]:
    jobs: List[Tuple[Path, Callable[[], np.ndarray]]] = []
    for stem, (source, size) in IMAGES.items():
        jobs.append((root / "images" / f"{stem}.png", lambda source=source, size=size: make_lr(_load(source), size)))
    for stem, (source, box, size) in CALIBRATION.items():
        jobs.append((root / "calibration" / f"{stem}.png",
                     lambda source=source, box=box, size=size: make_lr(region(_load(source), box), size)))
    return jobs


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent, help="the calib/ folder")
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args(argv)
    total, mismatched = 0, []
    jobs = _jobs(args.root)
    for path, make in jobs:
        arr = make()
        data = png_bytes(arr)
        total += len(data)
        if args.check:
            if not path.is_file() or not np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(io.BytesIO(data)))):
                mismatched.append(str(path.relative_to(args.root)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".png.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            print(f"{path}  {arr.shape[0]}x{arr.shape[1]}  {len(data)} bytes")
    print(f"{len(jobs)} images, {total} bytes")
    if mismatched:
        print("differ from the committed files:", ", ".join(mismatched), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
