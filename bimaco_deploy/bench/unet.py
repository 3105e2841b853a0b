"""UNet latency benchmark of any backend, always beside the float baseline in the same run.

The baseline is the full-precision model of the same family (the config's UNet without
binarization, e.g. ResShift/SinSR for BiMaCoSR) on the same backend: the reference torch
path for torch/torch-ref, ``unet_float.onnx`` for onnxruntime, its engine built the same
way for tensorrt (:meth:`~bimaco_deploy.backends.base.Backend.float_baseline`). Same threads, device, batch and
latent size, timed interleaved with the backend under test so that machine noise hits
both alike. Reported per model: warm-up count, latency p50/p90/p99,
throughput, peak memory (process RSS on CPU, allocator peak on CUDA).
"""

from __future__ import annotations

import contextlib
import gc
import platform
import resource
import statistics
import time
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..backends import BackendSpec, make_float_baseline, make_unet
from ..errors import InputError
from .jetson import jetson_facts
from .tegrastats import TegrastatsSampler, rail_power_w

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


def _measure_energy(
    models: Dict[str, Callable],
    args: Tuple[Any, ...],
    images: int,
    calls: int,
    device: str,
    say: Callable[[str], None],
    command: Union[str, Sequence[str]],
) -> Dict[str, Any]:
    """Energy per image and mean per-rail power of each model over ``calls`` back-to-back calls."""
    out: Dict[str, Any] = {}
    with TegrastatsSampler(interval_ms=50, command=command) as sampler:
        say("measuring idle power (1 s)")
        t_idle = sampler.now()
        time.sleep(1.0)
        idle_mw = sampler.idle_power_mw(t_idle, sampler.now())
        for name, fn in models.items():
            say(f"measuring energy: {name}")
            t0 = sampler.now()
            for _ in range(calls):
                fn(*args)
            _sync(device)
            t1 = sampler.now()
            rep = sampler.energy_per_image(t0, t1, images, idle_power_mw=idle_mw).as_dict()
            rep["rails_w"] = rail_power_w(sampler.snapshot(), t0, t1)
            out[name] = rep
    return out


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    """torch's thread count set to ``threads`` (None: unchanged) for the block, then restored:
    a library call must not leave it changed for the rest of the process, where it would change
    the float summation order of everything that runs afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    energy: Optional[bool] = None,
    tegrastats: Union[str, Sequence[str]] = "tegrastats",
) -> Dict[str, Any]:
    """Time ``spec``'s UNet and the float baseline, interleaved call by call.

    ``size`` is the latent H x W (= the padded LR size). On a Jetson the report also holds
    the L4T/JetPack release, power mode and clock state, and (``energy``; default: where
    tegrastats exists) energy per image and per-rail power of each model, measured in one
    block of ``repeats`` calls per model after the latency runs, with the idle draw over
    one second before them subtracted into ``dynamic_energy_per_image_j``. Returns a
    JSON-serialisable dict.
    """
    cfg = spec.config
    h, w = size
    m = cfg.unet.size_multiple
    if h <= 0 or w <= 0 or h % m or w % m:
        raise InputError(f"latent size {h}x{w}: H and W must be positive multiples of {m} for this model")
    if batch <= 0 or repeats <= 0 or warmup < 0:
        raise InputError(f"batch ({batch}) and repeats ({repeats}) must be positive, warmup ({warmup}) non-negative")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1 (or leave it out for torch's default, "
                         f"{torch.get_num_threads()} here)")
    if threads is not None and spec.threads is None:
        spec = replace(spec, threads=threads)
    with _torch_threads(threads):
        say = progress or (lambda _msg: None)
        device = spec.device
        one = cfg.diffusion.one_step().timestep if cfg.diffusion is not None else 14
        c_lat = cfg.unet.out_channels
        x, t, lq = _inputs(batch, h, w, c_lat, cfg.unet.in_channels - c_lat, one, device, seed)

        models: Dict[str, Callable] = {}
        say(f"loading {spec.name} backend")
        models[spec.name] = make_unet(spec)
        baseline_what = None
        if baseline:
            say("loading the float baseline")
            models["float-baseline"], baseline_what = make_float_baseline(spec)

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
            use_energy = TegrastatsSampler.available() if energy is None else energy
            energy_report = (
                _measure_energy(models, (x, t, lq), repeats * batch, repeats, device, say, tegrastats) if use_energy else None
            )
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
        facts = jetson_facts()
        if facts["is_jetson"]:
            report["jetson"] = facts
        if energy_report is not None:
            report["energy"] = energy_report
        if device.startswith("cuda"):
            report["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if baseline:
            report["baseline"] = baseline_what
            report["speedup_vs_float"] = results["float-baseline"]["p50_ms"] / results[spec.name]["p50_ms"]
        del models
        gc.collect()
        return report


def _cpu_name() -> str:
    """The CPU as benchmarks name it: model name, family/model numbers (virtual machines often
    hide the product name: "AMD EPYC") and the instruction sets that decide our speed."""
    info: Dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags", "Features") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vpopcntdq", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                       "asimd", "bf16") if f in flags]
    where = ", ".join(x for x in (f"family {info['cpu family']} model {info['model']}" if "cpu family" in info and "model" in info
                                  else "", " ".join(isa)) if x)
    return f"{name} ({where})" if where else name


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
    lines.append("")
    mem = f"Peak memory: process RSS {report['peak_rss_mib']:.0f} MiB"
    if "cuda_peak_mib" in report:
        mem += f", CUDA allocator {report['cuda_peak_mib']:.0f} MiB"
    lines.append(mem + " (both models loaded).")
    if "jetson" in report:
        j = report["jetson"]
        nvp = j.get("nvpmodel") or {}
        clocks = j.get("jetson_clocks") or {}
        lines.append(
            f"Jetson: L4T {j.get('l4t')}, JetPack {j.get('jetpack')}, power mode {nvp.get('mode')} (id {nvp.get('id')}), "
            f"jetson_clocks locked: {clocks.get('locked', 'unknown (jetson_clocks --show needs root)')}."
        )
    if "energy" in report:
        lines += ["", "| model | J / image | dynamic J / image | mean W | idle W | rail |", "|---|---|---|---|---|---|"]
        for name, e in report["energy"].items():
            dyn = e.get("dynamic_energy_per_image_j")
            idle = e.get("idle_power_w")
            lines.append(
                f"| {name} | {e['energy_per_image_j']:.4f} | {'-' if dyn is None else f'{dyn:.4f}'} | "
                f"{e['mean_power_w']:.2f} | {'-' if idle is None else f'{idle:.2f}'} | {e['source']} |"
            )
    if "speedup_vs_float" in report:
        lines.append(f"Float baseline: {report['baseline']}.")
        lines.append(f"Speed-up of `{report['backend']}` over the float baseline (p50): {report['speedup_vs_float']:.2f}x")
    return "\n".join(lines)
