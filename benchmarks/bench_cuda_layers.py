"""Per-layer CUDA benchmark: the binary op (1-bit tensor cores) vs torch fp16 cuDNN conv.

Every distinct 3x3 binary conv shape of the published BiMaCoSR UNet at a 64x64 latent,
batch 1 (the list cached by benchmarks/bench_layers.py in
``benchmarks/results/layer_shapes_bimacosr_64.json``; a built-in copy is used when that
file is absent) is timed as the WHOLE binary op through ``torch.ops.bimaco.binary_conv2d``
(sign packing + popcount GEMM + scaling, fp16 in and out) against
``F.conv2d`` in fp16 with bias and ``torch.backends.cudnn.benchmark = True``. CUDA events,
warm-up first, median of the repeats. ``--linear`` adds the binary linear shapes against
fp16 ``F.linear`` (cuBLAS).

    python benchmarks/bench_cuda_layers.py [--repeats 50] [--linear] [--json OUT.json]

GPU only: without a CUDA device (or without the CUDA op library, which this script
builds through bimaco_deploy.plugins.native) it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES_FILE = REPO / "benchmarks" / "results" / "layer_shapes_bimacosr_64.json"

# (in_channels, out_channels, stride, input_hw, count) of the 3x3 binary convs, from
# forward hooks on load_unet("bimacosr") at a 1x3x64x64 latent (see bench_layers.py).
BUILTIN_CONV3X3 = [
    (160, 160, 1, 64, 7), (160, 160, 2, 64, 1), (320, 160, 1, 64, 2), (480, 160, 1, 64, 1),
    (320, 320, 1, 64, 1), (160, 320, 1, 32, 1), (320, 320, 1, 32, 7), (320, 320, 2, 32, 1),
    (480, 320, 1, 32, 1), (640, 320, 1, 32, 2), (320, 320, 1, 16, 7), (320, 320, 2, 16, 1),
    (640, 320, 1, 16, 2), (640, 640, 1, 16, 1), (960, 320, 1, 16, 1), (320, 640, 1, 8, 1),
    (640, 640, 1, 8, 10), (960, 640, 1, 8, 1), (1280, 640, 1, 8, 2),
]


def load_shapes(with_linear: bool) -> List[Dict[str, object]]:
    """The layer list: the cached one when present, else the built-in 3x3 list."""
    if SHAPES_FILE.exists():
        layers = json.loads(SHAPES_FILE.read_text())["layers"]
        keep = [l for l in layers if l["kind"] == "conv" and l["kernel"] == 3]
        if with_linear:
            keep += [l for l in layers if l["kind"] == "linear"]
        return keep
    return [
        dict(kind="conv", in_channels=c, out_channels=o, kernel=3, stride=s, padding=1, input_hw=[hw, hw], count=n)
        for c, o, s, hw, n in BUILTIN_CONV3X3
    ]


def time_cuda(fn: Callable[[], object], repeats: int, warmup: int = 10) -> float:
    """Median milliseconds of ``fn`` measured with CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_layer(layer: Dict[str, object], repeats: int) -> Dict[str, object]:
    import torch
    import torch.nn.functional as F

    from bimaco_deploy.plugins import contract

    rng = np.random.default_rng(0)
    dev = torch.device("cuda")
    if layer["kind"] == "conv":
        c, o, k = int(layer["in_channels"]), int(layer["out_channels"]), int(layer["kernel"])
        s, p = int(layer["stride"]), int(layer["padding"])
        h, w = (int(v) for v in layer["input_hw"])  # type: ignore[union-attr]
        wf = rng.standard_normal((o, c, k, k)).astype(np.float32)
        x = torch.randn(1, c, h, w, device=dev, dtype=torch.float16)
        label = f"conv {c:>4}->{o:<4} k{k} s{s} {h}x{w}"
    else:
        c, o = int(layer["in_features"]), int(layer["out_features"])
        lead = [int(v) for v in layer["input_lead"]]  # type: ignore[union-attr]
        wf = rng.standard_normal((o, c)).astype(np.float32)
        x = torch.randn(*lead, c, device=dev, dtype=torch.float16)
        label = f"linear {c:>4}->{o:<4} rows {int(np.prod(lead))}"
    pw = contract.pack_weight(wf)
    wbits = torch.from_numpy(pw.bits).to(dev)
    alpha = torch.from_numpy(pw.alpha).to(dev)
    bias = torch.randn(o, device=dev)
    w16 = torch.from_numpy(wf).to(dev, torch.float16)
    b16 = bias.half()
    if layer["kind"] == "conv":
        def binary() -> object:
            return torch.ops.bimaco.binary_conv2d(x, wbits, alpha, bias, [s, s], [p, p, p, p], c, None)

        def dense() -> object:
            return F.conv2d(x, w16, b16, stride=s, padding=p)
    else:
        def binary() -> object:
            return torch.ops.bimaco.binary_linear(x, wbits, alpha, bias, c, None)

        def dense() -> object:
            return F.linear(x, w16, b16)

    t_bin, t_dense = time_cuda(binary, repeats), time_cuda(dense, repeats)
    return dict(layer=label, count=int(layer.get("count", 1)), binary_us=1e3 * t_bin, fp16_us=1e3 * t_dense,
                speedup=t_dense / t_bin if t_bin > 0 else float("nan"),
                weight_bytes_binary=int(pw.bits.nbytes + pw.alpha.nbytes + 4 * o), weight_bytes_fp16=int(w16.numel() * 2))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--linear", action="store_true", help="also time the binary linear shapes")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("bench_cuda_layers: torch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_cuda_layers: needs an NVIDIA GPU and a CUDA build of torch "
              "(torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return 2
    from bimaco_deploy.plugins import native

    results = native.build()
    if "cuda" not in native.load_libraries():
        print(f"bench_cuda_layers: the CUDA op library is not available: {results}", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True

    rows = [bench_layer(layer, args.repeats) for layer in load_shapes(args.linear)]
    print(f"device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
          f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, median of {args.repeats}")
    print(f"{'layer':<34} {'count':>5} {'binary us':>10} {'fp16 us':>10} {'speedup':>8}")
    for r in rows:
        print(f"{r['layer']:<34} {r['count']:>5} {r['binary_us']:>10.1f} {r['fp16_us']:>10.1f} {r['speedup']:>7.2f}x")
    tot_b = sum(r["binary_us"] * r["count"] for r in rows)
    tot_d = sum(r["fp16_us"] * r["count"] for r in rows)
    print(f"{'total (count-weighted)':<34} {'':>5} {tot_b:>10.1f} {tot_d:>10.1f} {tot_d / tot_b:>7.2f}x")
    if args.json:
        args.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows,
                                             total_binary_us=tot_b, total_fp16_us=tot_d), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
