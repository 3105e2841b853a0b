"""Load measurement of `bimaco-deploy serve` against local `infer`, in one run.

The server is what `serve --backend torch` starts: the Python variant of the model repository
(packed 1-bit UNet on our kernels, torch autoencoder) on the tritonserver nvidia-pytriton
bundles, on 127.0.0.1. Clients send LR images to `bimacosr_tiled` over HTTP (tritonclient):
1 client, then C concurrent clients, each request timed from send to SR received. The local
baseline is `infer --backend torch`'s pipeline in this process, image after image (what
`infer` does for a folder), on the same images, seeds and settings. Both sides use the
autoencoder in float32 (`--vq-precision fp32`: torch's float16 convolutions are 10-30x slower
on CPU). Server start-up and each side's first (warm-up) image are not timed.

    python benchmarks/bench_serve.py --config bimacosr-tiny [--size 64] [--requests 6] [--clients 1 4]
    python benchmarks/bench_serve.py --config bimacosr --requests 3      # published config, random weights

Writes benchmarks/results/serve_<config>.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimaco_deploy.backends import BackendSpec, resolve_config  # noqa: E402
from bimaco_deploy.pipeline.factory import make_pipeline  # noqa: E402
from bimaco_deploy.pipeline.images import tensor_to_uint8, uint8_to_tensor  # noqa: E402
from bimaco_deploy.pipeline.tiling import super_resolve  # noqa: E402
from bimaco_deploy.reports import write_bytes_atomic, write_json_atomic  # noqa: E402
from bimaco_deploy.serving.client import RemoteSR  # noqa: E402
from bimaco_deploy.serving.repository import write_repository  # noqa: E402
from bimaco_deploy.serving.server import TritonServer  # noqa: E402


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(latencies: List[float], wall: float) -> Dict[str, float]:
    return {"images": len(latencies), "wall_s": wall, "images_per_s": len(latencies) / wall,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99), "mean_s": statistics.mean(latencies)}


def run_clients(url: str, images: List[np.ndarray], clients: int, requests: int) -> Dict[str, float]:
    """``clients`` threads, each with its own connection, ``requests`` images each, all started together."""
    latencies: List[float] = []
    lock = threading.Lock()
    errors: List[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        remote = RemoteSR(url)
        try:
            barrier.wait()
            for r in range(requests):
                lr = images[(k * requests + r) % len(images)]
                t0 = time.perf_counter()
                remote(lr, seed=k * 1000 + r)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
        except Exception as e:
            errors.append(f"client {k}: {e}")
        finally:
            remote.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError("; ".join(errors))
    return summary(latencies, wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="bimacosr-tiny")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--vq-ckpt", default=None)
    ap.add_argument("--size", type=int, default=64, help="LR side (one tile up to 256)")
    ap.add_argument("--requests", type=int, default=6, help="requests per client (and local images)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--port", type=int, default=18950)
    args = ap.parse_args()

    cfg = resolve_config(args.config)
    name = Path(cfg.source).stem
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(max(args.clients) * args.requests)]
    load = os.getloadavg()
    out: Dict[str, object] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_avg_start": load,
                    "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "config": str(cfg.source), "lr_size": args.size, "vq_dtype": "float32", "weights": args.ckpt or "random (seed 0)",
    }

    # local infer: the pipeline `infer --backend torch --vq-precision fp32` runs, image after image;
    # timed before and after the server (other load on the machine drifts; both are reported)
    spec = BackendSpec("torch", cfg, ckpt=args.ckpt, seed=0)
    t0 = time.perf_counter()
    pipe = make_pipeline(spec, args.vq_ckpt, vq_dtype=torch.float32)
    out["local_load_s"] = time.perf_counter() - t0
    tensor_to_uint8(super_resolve(pipe, uint8_to_tensor(images[-1]), seed=99))  # warm-up

    def local_run() -> Dict[str, float]:
        lat = []
        t0 = time.perf_counter()
        for i in range(args.requests):
            t1 = time.perf_counter()
            tensor_to_uint8(super_resolve(pipe, uint8_to_tensor(images[i]), seed=i))
            lat.append(time.perf_counter() - t1)
        return summary(lat, time.perf_counter() - t0)

    out["local"] = local_run()

    # the server `serve --backend torch` starts
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(Path(tmp) / "repo", backend="python", runtime="torch", config=cfg, ckpt=args.ckpt,
                                vq_ckpt=args.vq_ckpt, vq_dtype="float32", max_batch=4, link_files=False).path
        server = TritonServer(repo, http_port=args.port, grpc_port=args.port + 1)
        t0 = time.perf_counter()
        with server.start(ready_timeout_s=1800):
            out["server_start_s"] = time.perf_counter() - t0
            warm = RemoteSR(server.http_url)
            warm(images[-1], seed=99)
            warm.close()
            for c in args.clients:
                out[f"serve_{c}_clients"] = run_clients(server.http_url, images, c, args.requests)
                print(f"{c} client(s): {out[f'serve_{c}_clients']}", flush=True)
    out["local_after"] = local_run()

    rows = [("local `infer --backend torch` (sequential), before the server", out["local"])]
    rows += [(f"`serve`, {c} concurrent client(s)", out[f"serve_{c}_clients"]) for c in args.clients]
    rows += [("local `infer --backend torch` (sequential), after the server", out["local_after"])]
    md = [f"config `{name}`, LR {args.size}x{args.size} (one tile), vq float32, weights {out['weights']}",
          "", "| path | images | images/s | p50 latency (s) | p99 latency (s) |", "|---|---|---|---|---|"]
    for label, r in rows:
        md.append(f"| {label} | {r['images']} | {r['images_per_s']:.3f} | {r['p50_s']:.2f} | {r['p99_s']:.2f} |")
    md.append("")
    md.append(f"server start-up {out['server_start_s']:.1f} s (not timed above); load average at start {load[0]:.2f}")
    text = "\n".join(md) + "\n"
    print(text)
    results = REPO / "benchmarks" / "results"
    write_json_atomic(results / f"serve_{name}.json", out)
    write_bytes_atomic(results / f"serve_{name}.md", text.encode())


if __name__ == "__main__":
    main()
