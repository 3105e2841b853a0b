"""``bimaco-deploy bench --pipeline``: the whole SR of one image, deployed binary pipeline vs float pipeline.

What a user gets end to end, image in and image out, on one backend:

* **binary**: the backend's packed 1-bit UNet + the autoencoder at ``--vq-precision``;
* **float**: the float model of the same family on the same backend (``float_baseline``)
  + the float32 autoencoder of the same weights: what a user had before.

One LR image per repeat (default 64x64; up to one 256x256 tile), the two pipelines
interleaved repeat by repeat so that machine noise hits both alike, each stage timed:
``pre`` (uint8 image -> [-1, 1], padding, 4x bicubic), ``encode``, ``unet`` (prior, input
scaling and the UNet), ``decode`` (codebook snapping and decoder), ``post`` (crop, clamp,
uint8) and ``total``. Reported per pipeline: median, p90 and min of every stage, and the
peak resident memory while it ran; top level: ``end_to_end_speedup`` = float total /
binary total (medians).
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..backends import BackendSpec, make_backend
from ..errors import InputError
from ..models.precision import resolve_precision
from ..pipeline.factory import make_autoencoder
from ..pipeline.images import read_image_uint8, tensor_to_uint8, uint8_to_tensor
from ..pipeline.memory import PeakRSS, peak_rss_mib
from ..pipeline.onestep import OneStepSR
from ..pipeline.tiling import tile_generator
from .unet import _cpu_name, _sync, _torch_threads

PathLike = Union[str, Path]
STAGES = ("pre", "encode", "unet", "decode", "post", "total")
#: The LR image timed (resized to --lr-size): a photograph, so that the INT8 graphs see the
#: kind of input they were calibrated on.
SAMPLE_IMAGE = Path(__file__).resolve().parents[2] / "calib" / "images" / "astronaut_64x64.png"


def sample_lr(size: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: the sample photograph resized bicubically to ``size`` (seeded noise if absent)."""
    h, w = size
    if SAMPLE_IMAGE.is_file():
        from PIL import Image

        img = Image.fromarray(read_image_uint8(SAMPLE_IMAGE)).resize((w, h), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def run_stages(pipe: OneStepSR, lr_uint8: np.ndarray, seed: int = 0) -> Tuple[Dict[str, float], np.ndarray]:
    """One SR of ``lr_uint8`` through ``pipe``, each stage timed (ms); returns (times, SR uint8)."""
    dev = str(pipe.device)
    times: Dict[str, float] = {}
    t_all = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        _sync(dev)
        now = time.perf_counter()
        times[name] = 1000.0 * (now - t)
        t = now

    with torch.no_grad():
        lr = uint8_to_tensor(lr_uint8)
        h, w = lr.shape[-2:]
        y0 = pipe.prepare(lr)
        up = pipe.upsample(y0)
        lap("pre")
        z = pipe.encode(up)
        lap("encode")
        noise = pipe.make_noise(z, tile_generator(seed, 0))
        x_in = pipe.scale_input(pipe.prior(z, noise))
        out = pipe.unet(x_in, pipe.timesteps(x_in.shape[0]), y0)
        out = torch.as_tensor(out).to(device=pipe.device, dtype=torch.float32)
        lap("unet")
        decoded = pipe.decode(out)
        lap("decode")
        sr = decoded[:, :, : h * pipe.sf, : w * pipe.sf].clamp(-1.0, 1.0) * 0.5 + 0.5
        img = tensor_to_uint8(sr)
        lap("post")
    times["total"] = 1000.0 * (time.perf_counter() - t_all)
    return times, img


def _stats(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "p90": float(np.percentile(values, 90)), "min": min(values),
            "max": max(values)}


def bench_pipeline(
    spec: BackendSpec,
    *,
    vq_ckpt: Optional[PathLike] = None,
    vq_precision: Optional[str] = None,
    calib: Optional[PathLike] = None,
    lr_size: Tuple[int, int] = (64, 64),
    warmup: int = 1,
    repeats: int = 5,
    threads: Optional[int] = None,
    seed: int = 0,
    baseline: bool = True,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Time the whole SR of one LR image: binary pipeline vs float pipeline, interleaved (module docstring).

    ``vq_precision`` (None: the device default) applies to the binary pipeline; the float
    pipeline's autoencoder is always fp32. Graphs the autoencoder needs (INT8 calibrated on
    ``calib``) are made and cached on first use, and the progress callback says so.
    """
    say = progress or (lambda _msg: None)
    cfg = spec.config
    h, w = lr_size
    if h <= 0 or w <= 0 or max(h, w) > 256:
        raise InputError(f"--lr-size {h}x{w}: one LR image of 1 to 256 px a side (a larger image is tiled: use infer)")
    if repeats <= 0 or warmup < 0:
        raise InputError(f"repeats ({repeats}) must be positive, warmup ({warmup}) non-negative")
    if cfg.autoencoder is None or cfg.diffusion is None:
        raise InputError(f"{cfg.source}: the pipeline needs the 'autoencoder' and 'diffusion' sections")
    if threads is not None and spec.threads is None:
        spec = replace(spec, threads=threads)
    precision = resolve_precision(vq_precision, spec.device)
    with _torch_threads(threads):
        backend = make_backend(spec)
        say(f"loading the binary pipeline ({spec.name}, autoencoder {precision})")
        pipes: Dict[str, OneStepSR] = {
            "binary": OneStepSR(backend.unet(), make_autoencoder(spec, vq_ckpt, precision, calib=calib, say=say), cfg)
        }
        what = {"binary": f"{spec.name} packed 1-bit UNet + {precision} autoencoder ({type(pipes['binary'].vq).__name__})"}
        if baseline:
            say("loading the float pipeline (float UNet of the same family + fp32 autoencoder)")
            unet_f, unet_what = backend.float_baseline()
            # the float autoencoder is made from the weights, not the export (which may hold int8 graphs)
            vq_f = make_autoencoder(replace(spec, artifacts=None), vq_ckpt, "fp32", calib=calib, say=say)
            pipes["float"] = OneStepSR(unet_f, vq_f, cfg)
            what["float"] = f"{unet_what} + fp32 autoencoder ({type(vq_f).__name__})"
        lr = sample_lr((h, w), seed)
        times: Dict[str, Dict[str, List[float]]] = {k: {s: [] for s in STAGES} for k in pipes}
        peaks: Dict[str, float] = {k: 0.0 for k in pipes}
        for name, pipe in pipes.items():
            for i in range(warmup):
                say(f"warm-up {i + 1}/{warmup}: {name}")
                run_stages(pipe, lr, seed)
        for r in range(repeats):
            for name, pipe in pipes.items():
                say(f"repeat {r + 1}/{repeats}: {name}")
                with PeakRSS(device=spec.device) as mem:
                    t, _ = run_stages(pipe, lr, seed)
                peaks[name] = max(peaks[name], mem.peak_mib)
                for s in STAGES:
                    times[name][s].append(t[s])
        results: Dict[str, Any] = {}
        for name in pipes:
            st = {s: _stats(v) for s, v in times[name].items()}
            results[name] = {
                "what": what[name],
                "vq_precision": precision if name == "binary" else "fp32",
                "stages_ms": {s: st[s]["median"] for s in STAGES},
                "stages_p90_ms": {s: st[s]["p90"] for s in STAGES},
                "stages_min_ms": {s: st[s]["min"] for s in STAGES},
                "raw_ms": times[name],
                "peak_rss_mib": peaks[name],
            }
        report: Dict[str, Any] = {
            "kind": "pipeline",
            "backend": spec.name,
            "config": str(cfg.source),
            "lr_size": [h, w],
            "sr_size": [h * cfg.diffusion.sf, w * cfg.diffusion.sf],
            "vq_precision": precision,
            "calibration": str(calib) if calib else ("calib/calibration" if precision == "int8" else None),
            "warmup": warmup,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "device": spec.device,
            "weights": "random init (seed %d)" % (spec.seed or 0) if spec.ckpt is None else str(spec.ckpt),
            "machine": {"cpu": _cpu_name(), "python": platform.python_version(), "torch": torch.__version__},
            "pipelines": results,
            "process_peak_rss_mib": peak_rss_mib(),
        }
        if baseline:
            report["end_to_end_speedup"] = results["float"]["stages_ms"]["total"] / results["binary"]["stages_ms"]["total"]
            report["stage_speedup"] = {s: results["float"]["stages_ms"][s] / max(results["binary"]["stages_ms"][s], 1e-9)
                                       for s in STAGES}
        del pipes
        gc.collect()
        return report


def pipeline_markdown(report: Dict[str, Any]) -> str:
    """The report as a markdown table (median / p90 ms per stage, speed-up per stage)."""
    h, w = report["lr_size"]
    p = report["pipelines"]
    lines = [
        f"Whole SR of one {h}x{w} LR image -> {report['sr_size'][0]}x{report['sr_size'][1]}, backend "
        f"`{report['backend']}`, {report['threads']} threads, {report['device']}, {report['machine']['cpu']}, "
        f"torch {report['machine']['torch']}; {report['warmup']} warm-up + {report['repeats']} timed repeats, "
        f"pipelines interleaved; {report['weights']}.",
        "",
    ]
    names = list(p)
    head = "| stage | " + " | ".join(f"{n} median ms | {n} p90 ms" for n in names)
    if "end_to_end_speedup" in report:
        head += " | speed-up |"
    else:
        head += " |"
    lines += [head, "|" + "---|" * (1 + 2 * len(names) + ("end_to_end_speedup" in report))]
    for s in STAGES:
        row = f"| {'**total**' if s == 'total' else s} | " + " | ".join(
            f"{p[n]['stages_ms'][s]:.1f} | {p[n]['stages_p90_ms'][s]:.1f}" for n in names)
        if "end_to_end_speedup" in report:
            row += f" | {report['stage_speedup'][s]:.2f}x |"
        else:
            row += " |"
        lines.append(row)
    lines.append("")
    for n in names:
        lines.append(f"- {n}: {p[n]['what']}; peak RSS while running {p[n]['peak_rss_mib']:.0f} MiB")
    if "end_to_end_speedup" in report:
        lines.append(f"\nEnd-to-end speed-up of the binary pipeline over the float pipeline (median total): "
                     f"**{report['end_to_end_speedup']:.2f}x**")
    return "\n".join(lines)
