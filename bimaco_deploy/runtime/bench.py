"""UNet latency benchmark of any backend, always beside the float baseline in the same run.

The baseline is the full-precision model of the same family (the config's UNet without
binarization, e.g. ResShift/SinSR for BiMaCoSR) on the reference torch path with the same
threads, device, batch and latent size, timed interleaved with the backend under test so
that machine noise hits both alike. Reported per model: warm-up count, latency p50/p90/p99,
throughput, peak memory (process RSS on CPU, allocator peak on CUDA).
"""

from __future__ import annotations

import gc
import platform
import resource
import statistics
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import InputError
from .backends import BackendSpec, make_unet

Call = Callable[[], Any]


def _percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(batch: int, h: int, w: int, channels: int, lq_channels: int, timestep: int, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, h, w, generator=g).to(device)
    lq = (torch.rand(batch, lq_channels, h, w, generator=g) * 2 - 1).to(device)
    t = torch.full((batch,), timestep, dtype=torch.int64, device=device)
    return x, t, lq


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stats(times_ms: List[float], batch: int) -> Dict[str, float]:
    p50 = _percentile(times_ms, 50)
    return {
        "p50_ms": p50,
        "p90_ms": _percentile(times_ms, 90),
        "p99_ms": _percentile(times_ms, 99),
        "mean_ms": statistics.fmean(times_ms),
        "min_ms": min(times_ms),
        "images_per_s": 1000.0 * batch / p50,
    }


def bench_unet(
    spec: BackendSpec,
    *,
    size: Tuple[int, int] = (64, 64),
    batch: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    threads: Optional[int] = None,
    baseline: bool = True,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Time ``spec``'s UNet and the float baseline, interleaved call by call.

    ``size`` is the latent H x W (= the padded LR size). Returns a JSON-serialisable dict.
    """
    cfg = spec.config
    h, w = size
    m = cfg.unet.size_multiple
    if h <= 0 or w <= 0 or h % m or w % m:
        raise InputError(f"latent size {h}x{w}: H and W must be positive multiples of {m} for this model")
    if batch <= 0 or repeats <= 0 or warmup < 0:
        raise InputError(f"batch ({batch}) and repeats ({repeats}) must be positive, warmup ({warmup}) non-negative")
    if threads is not None:
        torch.set_num_threads(threads)
    say = progress or (lambda _msg: None)
    device = spec.device
    one = cfg.diffusion.one_step().timestep if cfg.diffusion is not None else 14
    c_lat = cfg.unet.out_channels
    x, t, lq = _inputs(batch, h, w, c_lat, cfg.unet.in_channels - c_lat, one, device, seed)

    models: Dict[str, Callable] = {}
    say(f"loading {spec.name} backend")
    models[spec.name] = make_unet(spec)
    if baseline:
        from ..models import float_twin, load_unet
        from ..models.config import ModelConfig

        say("loading the float baseline")
        float_cfg: ModelConfig = replace(cfg, unet=float_twin(cfg.unet))
        models["float-baseline"] = load_unet(float_cfg, None, seed=seed).to(device)

    times: Dict[str, List[float]] = {k: [] for k in models}
    with torch.no_grad():
        for name, fn in models.items():
            for _ in range(warmup):
                fn(x, t, lq)
            _sync(device)
        for r in range(repeats):
            say(f"repeat {r + 1}/{repeats}")
            for name, fn in models.items():
                _sync(device)
                t0 = time.perf_counter()
                fn(x, t, lq)
                _sync(device)
                times[name].append(1000.0 * (time.perf_counter() - t0))
    results = {name: _stats(ts, batch) for name, ts in times.items()}
    report: Dict[str, Any] = {
        "backend": spec.name,
        "config": str(cfg.source),
        "latent_size": [h, w],
        "batch": batch,
        "warmup": warmup,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "device": device,
        "machine": {"cpu": _cpu_name(), "python": platform.python_version(), "torch": torch.__version__},
        "results": results,
        "peak_rss_mib": _peak_rss_mib(),
    }
    if device.startswith("cuda"):
        report["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if baseline:
        report["speedup_vs_float"] = results["float-baseline"]["p50_ms"] / results[spec.name]["p50_ms"]
    del models
    gc.collect()
    return report


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_markdown(report: Dict[str, Any]) -> str:
    """The report as a markdown table."""
    h, w = report["latent_size"]
    lines = [
        f"UNet forward, batch {report['batch']}, latent {h}x{w}, {report['threads']} threads, "
        f"device {report['device']}, {report['machine']['cpu']}, torch {report['machine']['torch']}; "
        f"{report['warmup']} warm-up + {report['repeats']} timed calls, interleaved.",
        "",
        "| model | p50 ms | p90 ms | p99 ms | images/s |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['images_per_s']:.2f} |")
    if "speedup_vs_float" in report:
        lines.append("")
        lines.append(f"Speed-up of `{report['backend']}` over the float baseline (p50): {report['speedup_vs_float']:.2f}x")
    return "\n".join(lines)
