"""Latency, throughput and energy per image of one TensorRT engine on its own.

``python -m bimaco_deploy.bench.engine ENGINE [HxW] [BATCH]`` prints :func:`bench_engine` as JSON.
For the engine beside its float baseline in one run, use :func:`.unet.bench_unet`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..backends.tensorrt.builder import parse_hw
from ..backends.tensorrt.runner import TrtUNet
from ..errors import InputError
from .tegrastats import TegrastatsSampler

PathLike = Union[str, Path]


def bench_engine(
    engine_path: PathLike,
    *,
    hw: Tuple[int, int] = (64, 64),
    batch: int = 1,
    iters: int = 50,
    warmup: int = 10,
    energy: Optional[bool] = None,
    plugin_lib: Optional[PathLike] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Latency, throughput and (on a Jetson) energy per image of a UNet engine.

    Each timed call is a whole UNet call (host->device copies, the engine, the
    copy back). ``energy``: measure with tegrastats (default: when it exists);
    the idle draw over one second before the run is reported and subtracted
    into ``dynamic_energy_per_image_j``.
    """
    if iters <= 0 or warmup < 0 or batch <= 0:
        raise InputError(f"iters ({iters}) and batch ({batch}) must be positive, warmup ({warmup}) non-negative")
    unet = TrtUNet(engine_path, plugin_lib=plugin_lib)
    h, w = hw
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, h, w)).astype(np.float32)
    lq = rng.standard_normal((batch, 3, h, w)).astype(np.float32)
    t = np.full((batch,), 14, dtype=np.int64)
    for _ in range(warmup):
        unet(x, t, lq)
    use_energy = TegrastatsSampler.available() if energy is None else energy
    sampler = TegrastatsSampler(interval_ms=50).start() if use_energy else None
    try:
        idle_mw = None
        if sampler is not None:
            t_idle = sampler.now()
            time.sleep(1.0)
            idle_mw = sampler.idle_power_mw(t_idle, sampler.now())
        times = []
        t0 = time.monotonic()
        for _ in range(iters):
            s = time.perf_counter()
            unet(x, t, lq)
            times.append(time.perf_counter() - s)
        t1 = time.monotonic()
    finally:
        if sampler is not None:
            sampler.stop()
    times.sort()
    report: Dict[str, Any] = {
        "engine": str(engine_path),
        "input": [batch, 3, h, w],
        "iters": iters,
        "median_ms": round(1000 * statistics.median(times), 3),
        "p90_ms": round(1000 * times[min(len(times) - 1, int(0.9 * len(times)))], 3),
        "images_per_s": round(batch * iters / (t1 - t0), 2),
    }
    if sampler is not None:
        report["energy"] = sampler.energy_per_image(t0, t1, batch * iters, idle_power_mw=idle_mw).as_dict()
    unet.close()
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m bimaco_deploy.bench.engine ENGINE [HxW] [BATCH]``: print :func:`bench_engine` as JSON."""
    import json
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(main.__doc__)
        return 2
    hw = parse_hw(args[1]) if len(args) > 1 else (64, 64)
    batch = int(args[2]) if len(args) > 2 else 1
    print(json.dumps(bench_engine(args[0], hw=hw, batch=batch), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
