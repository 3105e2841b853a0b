"""Per-layer CPU benchmark: the native binary op vs torch float32 conv2d/linear of the same shape.

Every distinct binary layer shape of the published BiMaCoSR UNet (batch 1, 64x64
latent) is timed as the WHOLE binary op (sign packing + popcount GEMM + scaling, through
``torch.ops.bimaco``) against ``F.conv2d`` / ``F.linear`` in float32 with bias (oneDNN /
MKL), in the same process with the same thread count. Timings of the two are
interleaved repeat by repeat so that load from other processes hits both alike; the
median of the repeats is reported.

The layer list comes from forward hooks on ``load_unet("bimacosr")`` (random init) and is
cached in ``benchmarks/results/layer_shapes_bimacosr_64.json`` because building the
published model takes minutes on 2 cores; ``--derive`` rebuilds it.

    python benchmarks/bench_layers.py [--repeats 15] [--threads 2] [--isa avx2 popcnt] [--derive]

Writes ``benchmarks/results/bench_layers.{json,md}`` (``bench_layers_t<n>.*`` for other thread
counts) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimaco_deploy.plugins import contract, native, torch_ops  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SHAPES_FILE = RESULTS / "layer_shapes_bimacosr_64.json"


def derive_layer_shapes(config: str = "bimacosr", latent: int = 64) -> Dict[str, object]:
    """Distinct binary layer shapes of one forward pass, with how often each occurs."""
    from bimaco_deploy.models import BinaryConv2d, iter_binary_layers, load_unet

    model = load_unet(config)
    found: Dict[tuple, Dict[str, object]] = {}

    def hook(name: str):
        def f(mod, inputs, _out):
            x = inputs[0]
            if isinstance(mod, BinaryConv2d):
                key = ("conv", mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                       tuple(x.shape[2:]))
                row = dict(kind="conv", in_channels=mod.in_channels, out_channels=mod.out_channels,
                           kernel=mod.kernel_size, stride=mod.stride, padding=mod.padding, input_hw=list(x.shape[2:]))
            else:
                key = ("linear", mod.in_features, mod.out_features, tuple(x.shape[:-1]))
                row = dict(kind="linear", in_features=mod.in_features, out_features=mod.out_features,
                           input_lead=list(x.shape[:-1]))
            entry = found.setdefault(key, dict(row, count=0, example=name))
            entry["count"] = int(entry["count"]) + 1

        return f

    for name, mod in iter_binary_layers(model):
        mod.register_forward_hook(hook(name))
    x = torch.randn(1, 3, latent, latent)
    with torch.no_grad():
        model(x, torch.tensor([14]), torch.randn(1, 3, latent, latent))
    return {
        "source": f"load_unet('{config}') random init, forward hooks, x/lq 1x3x{latent}x{latent}, timestep 14",
        "layers": list(found.values()),
    }


def machine_info(threads: int) -> Dict[str, object]:
    """CPU model and SIMD flags, torch build, thread count, load average."""
    model, flags = platform.processor(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and model in ("", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = sorted(f for f in have if f.startswith(("avx", "fma", "popcnt", "f16c", "bmi")))
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "simd_flags": flags,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "cpu_isa_auto": torch_ops.cpu_isa(),
    }


def _time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_layer(row: Dict[str, object], isas: List[str], repeats: int, seed: int = 0) -> Dict[str, object]:
    """Median milliseconds of the float op and of the binary op per ISA, interleaved."""
    g = torch.Generator().manual_seed(seed)
    if row["kind"] == "conv":
        c, o, k = int(row["in_channels"]), int(row["out_channels"]), int(row["kernel"])
        s, p = int(row["stride"]), int(row["padding"])
        h, w = row["input_hw"]  # type: ignore[misc]
        x = torch.randn(1, c, h, w, generator=g)
        wt = torch.randn(o, c, k, k, generator=g)
        bias = torch.randn(o, generator=g)
        pw = contract.pack_weight(wt.numpy())
        wb, alpha = torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha)

        def run_float():
            return F.conv2d(x, wt, bias, stride=s, padding=p)

        def run_bin():
            return torch.ops.bimaco.binary_conv2d(x, wb, alpha, bias, [s, s], [p, p, p, p], c, None)

        label = f"conv{k}x{k} {c}->{o} s{s} @{h}x{w}"
    else:
        c, o = int(row["in_features"]), int(row["out_features"])
        lead = [int(v) for v in row["input_lead"]]  # type: ignore[union-attr]
        x = torch.randn(*lead, c, generator=g)
        wt = torch.randn(o, c, generator=g)
        bias = torch.randn(o, generator=g)
        pw = contract.pack_weight(wt.numpy())
        wb, alpha = torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha)

        def run_float():
            return F.linear(x, wt, bias)

        def run_bin():
            return torch.ops.bimaco.binary_linear(x, wb, alpha, bias, c, None)

        label = f"linear {c}->{o} x{'x'.join(map(str, lead))}"
    times: Dict[str, List[float]] = {"float": []}
    for isa in isas:
        times[isa] = []
    for _ in range(3):  # warm-up: allocator, oneDNN primitive cache, page faults
        run_float()
        for isa in isas:
            torch_ops.set_cpu_isa(isa)
            run_bin()
    for _ in range(repeats):
        times["float"].append(_time_once(run_float))
        for isa in isas:
            torch_ops.set_cpu_isa(isa)
            times[isa].append(_time_once(run_bin))
    torch_ops.set_cpu_isa("auto")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = {k: min(v) * 1e3 for k, v in times.items()}
    return {
        "label": label,
        **row,
        "ms": med,
        "min_ms": best,
        "speedup": {isa: med["float"] / med[isa] for isa in isas},
        # min over repeats is the least disturbed run when other processes share the cores
        "speedup_min": {isa: best["float"] / best[isa] for isa in isas},
    }


def render_markdown(result: Dict[str, object]) -> str:
    """The results as a markdown table with a summary of the 3x3 targets."""
    info = result["machine"]
    isas = result["isas"]
    lines = [
        "# Binary layer benchmark (CPU)",
        "",
        f"CPU: {info['cpu']} ({info['cores']} cores), flags: {' '.join(info['simd_flags'])}; "
        f"torch {info['torch']}, threads {info['threads']}, auto ISA `{info['cpu_isa_auto']}`; "
        f"load average at start {tuple(round(v, 2) for v in info['loadavg_start'])}, "
        f"end {tuple(round(v, 2) for v in info['loadavg_end'])}.",
        f"Median of {result['repeats']} interleaved repeats; binary = whole op (sign pack + popcount GEMM + "
        "scale) via torch.ops.bimaco; float = F.conv2d / F.linear float32 with bias.",
        "",
        "Speed-up columns: ratio of medians; in brackets the ratio of the fastest repeats (least disturbed "
        "by other processes sharing the cores).",
        "",
        "| layer | count | float ms | " + " | ".join(f"{i} ms" for i in isas) + " | " + " | ".join(
            f"x {i}" for i in isas) + " |",
        "|---|---|---|" + "---|" * (2 * len(isas)),
    ]
    for r in result["layers"]:
        ms = r["ms"]
        lines.append(
            f"| {r['label']} | {r['count']} | {ms['float']:.3f} | "
            + " | ".join(f"{ms[i]:.3f}" for i in isas)
            + " | "
            + " | ".join(f"{r['speedup'][i]:.1f} ({r['speedup_min'][i]:.1f})" for i in isas)
            + " |"
        )
    s = result["summary"]
    lines += [
        "",
        f"3x3 layers ({s['n_3x3']} shapes), auto ISA `{s['isa']}`: min speedup {s['min_3x3']:.1f}x "
        f"(target >= 4x), median {s['median_3x3']:.1f}x (target >= 6x): "
        f"{'MET' if s['targets_met'] else 'NOT MET'}. From the fastest repeats: min {s['min_3x3_best']:.1f}x, "
        f"median {s['median_3x3_best']:.1f}x.",
        f"All binary layers of one forward (count-weighted): float {s['total_float_ms']:.1f} ms vs binary "
        f"{s['total_binary_ms']:.1f} ms ({s['total_float_ms'] / s['total_binary_ms']:.1f}x).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    """Run the benchmark, write JSON + markdown into benchmarks/results/, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", nargs="*", default=None, help="ISAs to time (default: every available one)")
    ap.add_argument("--derive", action="store_true", help="re-derive the layer shapes from load_unet")
    ap.add_argument("--only-3x3", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    native.build()
    if not torch_ops.ops_available():
        print(f"native ops unavailable: {torch_ops.unavailable_reason()}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    if args.derive or not SHAPES_FILE.exists():
        shapes = derive_layer_shapes()
        SHAPES_FILE.parent.mkdir(parents=True, exist_ok=True)
        SHAPES_FILE.write_text(json.dumps(shapes, indent=1))
    else:
        shapes = json.loads(SHAPES_FILE.read_text())
    available = list(torch_ops.cpu_available_isas())
    isas = args.isa or [i for i in available if i != "scalar"]
    auto = torch_ops.cpu_isa()
    if auto not in isas:
        isas.append(auto)
    info = machine_info(args.threads)
    rows = shapes["layers"]
    if args.only_3x3:
        rows = [r for r in rows if r["kind"] == "conv" and r["kernel"] == 3]
    layers = []
    for row in rows:
        res = bench_layer(row, isas, args.repeats)
        layers.append(res)
        print(f"{res['label']:<40} float {res['ms']['float']:8.3f} ms  "
              + "  ".join(f"{i} {res['ms'][i]:7.3f} ms ({res['speedup'][i]:5.1f}x)" for i in isas), flush=True)
    info["loadavg_end"] = os.getloadavg()
    sp3 = [r["speedup"][auto] for r in layers if r["kind"] == "conv" and r["kernel"] == 3]
    sp3_best = [r["speedup_min"][auto] for r in layers if r["kind"] == "conv" and r["kernel"] == 3]
    summary = {
        "isa": auto,
        "min_3x3_best": min(sp3_best) if sp3_best else float("nan"),
        "median_3x3_best": float(np.median(sp3_best)) if sp3_best else float("nan"),
        "n_3x3": len(sp3),
        "min_3x3": min(sp3) if sp3 else float("nan"),
        "median_3x3": float(np.median(sp3)) if sp3 else float("nan"),
        "targets_met": bool(sp3) and min(sp3) >= 4.0 and float(np.median(sp3)) >= 6.0,
        "total_float_ms": sum(r["ms"]["float"] * r["count"] for r in layers),
        "total_binary_ms": sum(r["ms"][auto] * r["count"] for r in layers),
    }
    result = {"machine": info, "repeats": args.repeats, "isas": isas, "layers": layers, "summary": summary,
              "shapes_source": shapes.get("source")}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench_layers" if args.threads == 2 else f"bench_layers_t{args.threads}"  # 2 = the target setup
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    md = render_markdown(result)
    (args.out_dir / f"{stem}.md").write_text(md)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
