"""A real tritonserver (the one nvidia-pytriton bundles) serving the Python variant of
`triton-repo` for the tiny fixture on 127.0.0.1: it loads and runs every model, its SR equals
local `infer --backend torch` bit for bit, concurrent clients each get their own answer once,
and bad requests get clear errors while the server goes on serving."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image
from serving_helpers import MAX_SIZE, TILE, free_ports, need_triton, python_repo, triton_server  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from bimaco_deploy.cli import app
from bimaco_deploy.serving import names as N

pytestmark = pytest.mark.slow  # starting the server loads nine Python stubs with torch (~30-60 s on 2 cores)


def http_client(server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=600.0)


def request(client, model: str, lr: np.ndarray, dtype: str = "UINT8", seed=None, outputs=(N.SR,)):
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(N.LR, list(lr.shape), dtype)
    inp.set_data_from_numpy(lr)
    inputs = [inp]
    if seed is not None:
        s = httpclient.InferInput(N.SEED, [lr.shape[0], 1], "INT64")
        s.set_data_from_numpy(np.full((lr.shape[0], 1), seed, dtype=np.int64))
        inputs.append(s)
    return client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(o) for o in outputs])


def image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def local_pipeline(tiny_dir):
    """The pipeline `infer --backend torch --vq-dtype float32` runs, in this process."""
    import torch

    from bimaco_deploy.backends import BackendSpec, resolve_config
    from bimaco_deploy.pipeline.factory import make_pipeline

    spec = BackendSpec("torch", resolve_config(tiny_dir / "config.yaml"), ckpt=tiny_dir / "bimacosr_tiny.pth", seed=0)
    return make_pipeline(spec, tiny_dir / "vqgan.pth", vq_dtype=torch.float32)


def local_sr(pipe, lr: np.ndarray, seed: int) -> np.ndarray:
    from bimaco_deploy.pipeline.images import tensor_to_uint8, uint8_to_tensor
    from bimaco_deploy.pipeline.tiling import super_resolve

    return tensor_to_uint8(super_resolve(pipe, uint8_to_tensor(lr), seed=seed, tile=TILE))


def test_bundled_tritonserver_loads_and_runs_every_model_of_the_python_repository(triton_server):
    client = http_client(triton_server)
    try:
        assert client.is_server_live() and client.is_server_ready()
        index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert index == {name: "READY" for name in N.MODELS}
        lr = image(24, 40, 1)
        result = request(client, N.ENSEMBLE, lr[None], seed=7, outputs=(N.SR, N.SR_SIGNED))
        sr, signed = result.as_numpy(N.SR), result.as_numpy(N.SR_SIGNED)
        assert sr.shape == (1, 96, 160, 3) and sr.dtype == np.uint8
        assert signed.shape == (1, 3, 96, 160) and signed.dtype == np.float32
        assert signed.min() >= -1.0 and signed.max() <= 1.0
        # SR is exactly the uint8 rounding of the signed output, as in the local pipeline
        import torch

        from bimaco_deploy.pipeline.images import tensor_to_uint8

        assert np.array_equal(sr[0], tensor_to_uint8(torch.from_numpy(signed.copy()) * 0.5 + 0.5))
    finally:
        client.close()


def test_served_sr_equals_local_infer_torch_bit_for_bit(triton_server, tiny_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(image(40, 56, 2)).save(src / "one_tile.png")  # padded to 64 x 64: one tile
    Image.fromarray(image(96, 80, 3)).save(src / "tiled.png")  # 2 x 2 tiles of 64 px: the tiler's path
    local, served = tmp_path / "local", tmp_path / "served"
    local.mkdir()
    served.mkdir()
    for args in (["infer", str(src), str(local), "--backend", "torch", "--config", str(tiny_dir / "config.yaml"),
                  "--ckpt", str(tiny_dir / "bimacosr_tiny.pth"), "--vq-ckpt", str(tiny_dir / "vqgan.pth"),
                  "--vq-precision", "fp32", "--tile", str(TILE), "--seed", "11"],
                 ["infer", str(src), str(served), "--server", triton_server.http_url, "--seed", "11"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    for name in ("one_tile.png", "tiled.png"):
        a = np.asarray(Image.open(local / name))
        b = np.asarray(Image.open(served / name))
        assert a.shape == b.shape == ((160, 224, 3) if name == "one_tile.png" else (384, 320, 3))
        assert np.array_equal(a, b), f"{name}: {np.count_nonzero(a != b)} values differ"
    # a different seed gives a different image: the seed reaches the server's noise
    other = tmp_path / "other.png"
    result = CliRunner().invoke(app, ["infer", str(src / "one_tile.png"), str(other), "--server",
                                      triton_server.grpc_url, "--seed", "12"])
    assert result.exit_code == 0, result.output
    assert not np.array_equal(np.asarray(Image.open(other)), np.asarray(Image.open(served / "one_tile.png")))


def _success_count(client, model: str) -> int:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def test_concurrent_clients_each_get_their_own_response_once(triton_server, local_pipeline):
    jobs = [(image(16 + 8 * i, 24, 20 + i), 100 + i) for i in range(4)]  # a different size and seed each
    expected = [local_sr(local_pipeline, lr, seed) for lr, seed in jobs]
    results = [[] for _ in jobs]
    errors = []
    monitor = http_client(triton_server)
    before = {m: _success_count(monitor, m) for m in (N.TILED, N.ENSEMBLE)}
    start = threading.Barrier(len(jobs))

    def client_thread(i: int) -> None:
        client = http_client(triton_server)
        try:
            start.wait(60)
            lr, seed = jobs[i]
            results[i].append(request(client, N.TILED, lr[None], seed=seed).as_numpy(N.SR)[0])
        except Exception as e:  # collected and reported by the test
            errors.append(f"client {i}: {type(e).__name__}: {e}")
        finally:
            client.close()

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    try:
        assert not errors, errors
        assert all(len(r) == 1 for r in results)
        for i, (got, want) in enumerate(zip(results, expected)):
            assert np.array_equal(got[0], want), f"client {i} got another image than its own"
        after = {m: _success_count(monitor, m) for m in (N.TILED, N.ENSEMBLE)}
        assert after[N.TILED] - before[N.TILED] == len(jobs)  # each request processed once
        assert after[N.ENSEMBLE] - before[N.ENSEMBLE] == len(jobs)  # one tile each
    finally:
        monitor.close()


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(triton_server, tmp_path):
    from tritonclient.utils import InferenceServerException

    client = http_client(triton_server)
    try:
        cases = [
            (N.TILED, np.zeros((1, 8, 8, 3), np.float32), "FP32", r"LR.*FP32.*UINT8"),  # wrong dtype
            (N.TILED, np.zeros((1, 8, 3), np.uint8), "UINT8", r"unexpected shape for input 'LR'"),  # wrong rank
            (N.TILED, np.zeros((1, 0, 8, 3), np.uint8), "UINT8", r"0x8 image; expected at least 1x1"),  # zero size
            (N.TILED, np.zeros((1, MAX_SIZE + 1, 8, 3), np.uint8), "UINT8", rf"at most {MAX_SIZE} pixels"),
            (N.ENSEMBLE, np.zeros((1, TILE + 1, 8, 3), np.uint8), "UINT8", rf"one tile of at most {TILE}x{TILE}.*"
                                                                            rf"{N.TILED}"),
        ]
        for model, lr, dtype, pattern in cases:
            with pytest.raises(InferenceServerException, match=pattern):
                request(client, model, lr, dtype=dtype)
        assert client.is_server_ready()
        assert request(client, N.TILED, image(8, 8, 5)[None], seed=1).as_numpy(N.SR).shape == (1, 32, 32, 3)
    finally:
        client.close()

    # a corrupt PNG through `infer --server`: named, exit 2, nothing written; the server is unaffected
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(image(8, 8, 6)).save(src / "good.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(app, ["infer", str(src), str(out), "--server", triton_server.http_url])
    assert result.exit_code == 2
    assert "broken.png" in result.output and "cannot read as an image" in result.output
    assert list(out.iterdir()) == []
    assert triton_server.is_ready()


def test_infer_server_names_an_unreachable_server(tmp_path):
    need_triton()
    src = tmp_path / "a.png"
    Image.fromarray(image(8, 8, 7)).save(src)
    (port,) = free_ports(1)
    result = CliRunner().invoke(app, ["infer", str(src), str(tmp_path / "b.png"), "--server",
                                      f"http://127.0.0.1:{port}"])
    assert result.exit_code == 2
    assert f"127.0.0.1:{port}: cannot reach the server" in result.output
    assert not (tmp_path / "b.png").exists()
