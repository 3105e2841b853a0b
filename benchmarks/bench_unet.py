"""End-to-end UNet benchmark on CPU: packed 1-bit torch backend vs the float reference model.

Batch 1, 64x64 latent (the published model's training size), same process, same threads,
timings interleaved repeat by repeat. The binary model is ``load_unet("bimacosr")`` with
random weights, converted by :func:`bimaco_deploy.backends.packed_torch.pack_unet`; the
float baseline is ``load_unet("resshift-float")`` (random init). A torch.profiler pass
over one packed forward says where the time goes (the fused binary layers, norms,
attention, full-precision convs, the rest), and a per-layer re-run splits the binary
layers into the XNOR-popcount GEMM and the side branches fused into its epilogue.

    python benchmarks/bench_unet.py [--repeats 5] [--threads 2] [--latent 64]

Writes ``benchmarks/results/bench_unet.json`` and ``bench_unet.md`` and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimaco_deploy.models import load_config, load_unet  # noqa: E402
from bimaco_deploy.plugins import native, torch_ops  # noqa: E402
from bimaco_deploy.backends.packed_torch import memory_report, pack_unet, tensor_bytes  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

CATEGORIES = [
    ("norms", ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm")),
    ("attention", ("softmax", "bmm", "baddbmm", "matmul", "scaled_dot_product", "_softmax")),
    ("full-precision convs/linears", ("convolution", "mkldnn_convolution", "addmm", "linear", "mm")),
    ("elementwise/copies", ("add", "mul", "silu", "gelu", "copy_", "cat", "contiguous", "roll", "pad",
                            "permute", "view", "reshape", "clone", "index", "empty", "zeros")),
]


def _category(name: str) -> str:
    base = name.split("::")[-1]
    for cat, keys in CATEGORIES:
        if any(base == k or base.startswith(k) for k in keys):
            return cat
    return "other"


def profile_forward(model, args) -> Dict[str, float]:
    """Milliseconds per category of one forward (labels of the packed layers, then aten op names)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            model(*args)
    totals: Dict[str, float] = defaultdict(float)
    for evt in prof.events():
        parent, labelled = evt.cpu_parent, evt.name.startswith("bimaco.")
        while parent is not None and not labelled:
            labelled = parent.name.startswith("bimaco.")
            parent = parent.cpu_parent
        if evt.name.startswith("bimaco."):
            # inclusive time of the label, counted once (labels do not nest)
            totals[evt.name.replace("bimaco.", "packed layers: ")] += evt.cpu_time_total / 1e3
        elif not labelled:
            totals[_category(evt.name)] += evt.self_cpu_time_total / 1e3
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def split_binary_layers(model, args, repeats: int = 3) -> Dict[str, float]:
    """Milliseconds of all packed layers, split into the binary GEMM and the fused side branches.

    The side branches run inside the fused kernel's epilogue, where a profiler cannot
    see them. Each layer is re-run on its own recorded input, once as the contract op
    alone (binary GEMM + bias) and once whole; the difference is what RPReLU, SMB, LRMB
    (and the average-pool shortcut) cost. Medians of ``repeats`` calls, summed over layers.
    """
    from bimaco_deploy.models.probes import capture_binary_inputs
    from bimaco_deploy.backends.packed_torch import PACKED_TYPES, PackedBinaryConv2d

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PACKED_TYPES)]
    with torch.no_grad(), capture_binary_inputs(model, layers=layers) as captured:
        model(*args)
    inputs = {m: captured[n] for n, m in layers}

    def median_ms(fn) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    gemm = whole = 0.0
    with torch.no_grad():
        for m, x in inputs.items():
            if isinstance(m, PackedBinaryConv2d):
                gemm += median_ms(lambda: torch_ops.binary_conv2d(
                    x, m.wbits, m.alpha, m.bias, m.stride, m.pads, m.in_channels, m.wzero))
            else:
                gemm += median_ms(lambda: torch_ops.binary_linear(x, m.wbits, m.alpha, m.bias, m.in_features, m.wzero))
            whole += median_ms(lambda: m(x))
    return {"binary GEMM + bias (contract op)": gemm, "side branches in the epilogue": whole - gemm,
            "packed layers, whole": whole}


def main(argv: List[str] | None = None) -> int:
    """Run the benchmark; write JSON + markdown into benchmarks/results/."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                    help="thread counts to time (each gets its own rows and profile)")
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    native.build()
    if not torch_ops.ops_available():
        print(f"native ops unavailable: {torch_ops.unavailable_reason()}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    binary = load_unet("bimacosr")
    n_binary_params = sum(p.numel() for p in binary.parameters())
    ref_bytes = tensor_bytes(binary)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = pack_unet(binary, inplace=True)
    t_pack = time.perf_counter() - t0
    del binary
    floatm = load_unet("resshift-float")
    n_float = sum(p.numel() for p in floatm.parameters())
    mem = memory_report(packed, n_float)

    cfg = load_config("bimacosr")
    ts = torch.tensor([int(cfg.diffusion.one_step().timestep)])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, args.latent, args.latent, generator=g)
    lq = torch.randn(1, 3, args.latent, args.latent, generator=g)
    fwd_args = (x, ts, lq)
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times: Dict[str, List[float]] = {"float": [], "packed": []}
        with torch.no_grad():
            packed(*fwd_args)
            floatm(*fwd_args)
            for _ in range(args.repeats):
                for name, model in (("float", floatm), ("packed", packed)):
                    t = time.perf_counter()
                    model(*fwd_args)
                    times[name].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        runs.append({
            "threads": threads,
            "median_ms": med,
            "all_ms": {k: [round(v * 1e3, 2) for v in vs] for k, vs in times.items()},
            "speedup": med["float"] / med["packed"],
            "profile_packed_ms": profile_forward(packed, fwd_args),
            "binary_layer_split_ms": split_binary_layers(packed, fwd_args),
            "loadavg": os.getloadavg(),
        })
    result = {
        "machine": {"cpu_isa": torch_ops.cpu_isa(), "torch": torch.__version__},
        "latent": args.latent,
        "repeats": args.repeats,
        "timestep": int(ts),
        "runs": runs,
        "memory": mem,
        "float_params": n_float,
        "binary_reference_params": n_binary_params,
        "binary_reference_bytes": ref_bytes,
        "load_s": t_load,
        "pack_s": t_pack,
    }
    lines = [
        "# UNet forward, CPU (batch 1, {0}x{0} latent)".format(args.latent),
        "",
        f"ISA `{result['machine']['cpu_isa']}`, torch {torch.__version__}, median of {args.repeats} interleaved "
        "repeats per thread count.",
        "",
        "| threads | float reference (resshift-float) ms | packed 1-bit (bimacosr) ms | speed-up | load avg |",
        "|---|---|---|---|---|",
    ] + [
        f"| {r['threads']} | {r['median_ms']['float']:.1f} {r['all_ms']['float']} | "
        f"{r['median_ms']['packed']:.1f} {r['all_ms']['packed']} | {r['speedup']:.2f}x | "
        f"{tuple(round(v, 1) for v in r['loadavg'])} |"
        for r in runs
    ] + [
        "",
        f"Weight memory: packed {mem['total_bytes'] / 2**20:.1f} MiB "
        f"(binary words {mem['binary_weight_bytes'] / 2**20:.1f}, side branches/RPReLU/bias "
        f"{mem['binary_layer_side_bytes'] / 2**20:.1f}, other layers {mem['other_bytes'] / 2**20:.1f}) vs float "
        f"{n_float:,} params = {mem['float_bytes'] / 2**20:.1f} MiB: {mem['compression']:.1f}x smaller.",
    ]
    for r in runs:
        lines += [
            "",
            f"Where the packed forward's time goes at {r['threads']} thread(s) (torch.profiler, one forward, "
            "main-thread ms):",
            "",
            "| part | ms |",
            "|---|---|",
        ] + [f"| {k} | {v:.1f} |" for k, v in r["profile_packed_ms"].items()] + [
            "",
            f"The packed layers at {r['threads']} thread(s), each re-run alone on its recorded input "
            "(sum of per-layer medians, ms):",
            "",
            "| part | ms |",
            "|---|---|",
        ] + [f"| {k} | {v:.1f} |" for k, v in r["binary_layer_split_ms"].items()]
    md = "\n".join(lines) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_unet.json").write_text(json.dumps(result, indent=1))
    (args.out_dir / "bench_unet.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
