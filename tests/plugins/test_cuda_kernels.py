"""The CUDA kernels compute the op contract (GPU machines only).

Builds the torch CUDA op library through bimaco_deploy.plugins.native, then holds
torch.ops.bimaco.* on CUDA to the numpy reference of the contract over random shapes
(odd channel counts, stride 2, asymmetric pads, exact zeros in X and W, garbage tail
bits, fp16), and builds and runs the standalone self-test (plugins_cpp/cuda/selftest.cu),
which also pits the tensor-core path against the plain popcount path.
"""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bimaco_deploy.plugins import contract, native  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs an NVIDIA GPU and a CUDA build of torch (torch.cuda.is_available() is False)",
    ),
]


@pytest.fixture(scope="module")
def cuda_ops() -> None:
    """Build (if needed) and load libbimaco_torch_{cpu,cuda}.so."""
    if native.find_nvcc() is None:
        pytest.skip("nvcc not found: cannot build the CUDA op library")
    results = native.build()
    by_name = {r.name: r for r in results}
    cuda = by_name.get(native.CUDA_LIB_NAME)
    assert cuda is not None and cuda.status in ("built", "up-to-date"), f"CUDA op library not built: {results}"
    loaded = native.load_libraries()
    assert "cuda" in loaded, f"CUDA op library not loaded: {loaded}"


# --------------------------------------------------------------------------- helpers


def _weights(rng: np.random.Generator, shape: Tuple[int, ...], zero_rate: float, zero_channel: bool,
             garbage_tail: bool) -> contract.PackedWeight:
    w = rng.standard_normal(shape).astype(np.float32)
    if zero_rate:
        w[rng.random(shape) < zero_rate] = 0.0
    if zero_channel:
        w[0] = 0.0
    pw = contract.pack_weight(w)
    c = pw.in_channels
    if garbage_tail and c % 32:
        tail = np.uint32((0xFFFFFFFF << (c % 32)) & 0xFFFFFFFF).view(np.int32)
        pw.bits[..., -1] |= tail  # the contract says unused tail bits must not matter
        if pw.zero is not None:
            pw.zero[..., -1] |= tail
    return pw


def _activations(rng: np.random.Generator, shape: Tuple[int, ...], zero_rate: float, dtype: np.dtype) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    if zero_rate:
        x[rng.random(shape) < zero_rate] = 0.0
    return x.astype(dtype)


def _to_cuda(a: Optional[np.ndarray]) -> Optional["torch.Tensor"]:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).cuda()


def _assert_matches(y: np.ndarray, ref: np.ndarray, mag: np.ndarray, half: bool, what: str) -> None:
    """Float tolerance scaled by the output's magnitude |bias| + |alpha| * sum(s * C).

    A single flipped sign moves an output by 2 * alpha * s, about 2 / (C * taps) of that
    magnitude: far above this tolerance, so any integer error in a dot product fails.
    """
    y = y.astype(np.float64)
    ref = ref.astype(np.float64)
    rel = 2.0 ** -10 if half else 2e-6
    tol = rel * (np.abs(ref) + 1e-3 * mag) + 1e-6 * mag + 1e-7
    bad = ~(np.abs(y - ref) <= tol)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {y.size} outputs off; first at {np.argwhere(bad)[0].tolist()}: "
        f"got {y[bad][0]!r}, want {ref[bad][0]!r}"
    )


def _conv_case(seed: int, n: int, c: int, h: int, w: int, o: int, k: int, stride: Sequence[int],
               pads: Sequence[int], dtype: np.dtype, x_zero: float = 0.0, w_zero: float = 0.0,
               zero_channel: bool = False, garbage_tail: bool = False) -> None:
    rng = np.random.default_rng(seed)
    x = _activations(rng, (n, c, h, w), x_zero, dtype)
    pw = _weights(rng, (o, c, k, k), w_zero, zero_channel, garbage_tail)
    bias = rng.standard_normal(o).astype(np.float32)
    kwargs = dict(in_channels=c, kernel_shape=(k, k), strides=tuple(stride), pads=tuple(pads))
    ref = contract.binary_conv2d_reference(x, pw.bits, pw.alpha, bias, wzero=pw.zero, **kwargs)
    # magnitude: the same op on |x| with all-positive weights, |alpha| and |bias|
    mag = contract.binary_conv2d_reference(np.abs(x).astype(np.float32), np.zeros_like(pw.bits),
                                           np.abs(pw.alpha), np.abs(bias), **kwargs)
    xt = _to_cuda(x)
    y = torch.ops.bimaco.binary_conv2d(xt, _to_cuda(pw.bits), _to_cuda(pw.alpha), _to_cuda(bias), list(stride),
                                       list(pads), c, _to_cuda(pw.zero))
    assert y.dtype == xt.dtype and tuple(y.shape) == ref.shape
    _assert_matches(y.cpu().numpy(), ref, mag, dtype == np.float16, f"conv seed {seed}")


def _linear_case(seed: int, lead: Tuple[int, ...], k: int, o: int, dtype: np.dtype, x_zero: float = 0.0,
                 w_zero: float = 0.0, zero_channel: bool = False, garbage_tail: bool = False) -> None:
    rng = np.random.default_rng(seed)
    x = _activations(rng, (*lead, k), x_zero, dtype)
    pw = _weights(rng, (o, k), w_zero, zero_channel, garbage_tail)
    bias = rng.standard_normal(o).astype(np.float32)
    ref = contract.binary_linear_reference(x, pw.bits, pw.alpha, bias, in_features=k, wzero=pw.zero)
    mag = contract.binary_linear_reference(np.abs(x).astype(np.float32), np.zeros_like(pw.bits), np.abs(pw.alpha),
                                           np.abs(bias), in_features=k)
    xt = _to_cuda(x)
    y = torch.ops.bimaco.binary_linear(xt, _to_cuda(pw.bits), _to_cuda(pw.alpha), _to_cuda(bias), k,
                                       _to_cuda(pw.zero))
    assert y.dtype == xt.dtype and tuple(y.shape) == ref.shape
    _assert_matches(y.cpu().numpy(), ref, mag, dtype == np.float16, f"linear seed {seed}")


# --------------------------------------------------------------------------- parity

F32, F16 = np.float32, np.float16


@pytest.mark.parametrize(
    "case",
    [
        # the published model's widths: 160 channels is 5 words, not a multiple of 128 bits
        dict(n=1, c=160, h=16, w=16, o=160, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F32),
        dict(n=1, c=160, h=16, w=16, o=160, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F16),
        dict(n=2, c=320, h=9, w=11, o=70, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F32),
        dict(n=1, c=640, h=8, w=8, o=640, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F16),
        dict(n=1, c=1280, h=4, w=4, o=96, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F32),
        # stride 2, asymmetric and uneven pads, 1x1, odd channel counts, garbage tail bits
        dict(n=1, c=160, h=16, w=16, o=160, k=3, stride=(2, 2), pads=(1, 1, 1, 1), dtype=F32),
        dict(n=2, c=33, h=7, w=9, o=5, k=3, stride=(2, 1), pads=(0, 1, 2, 0), dtype=F32, garbage_tail=True),
        dict(n=1, c=1, h=5, w=5, o=3, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F32),
        dict(n=1, c=31, h=6, w=5, o=65, k=1, stride=(1, 1), pads=(0, 0, 0, 0), dtype=F16, garbage_tail=True),
        dict(n=1, c=200, h=5, w=7, o=129, k=3, stride=(1, 1), pads=(2, 0, 0, 2), dtype=F32, zero_channel=True),
        # exact zeros: in X (kernel-detected), in W (zero-mask input), both
        dict(n=1, c=160, h=8, w=8, o=64, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F32, x_zero=0.05),
        dict(n=1, c=37, h=6, w=6, o=20, k=3, stride=(2, 2), pads=(1, 1, 1, 1), dtype=F16, x_zero=0.3),
        dict(n=1, c=96, h=6, w=6, o=40, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F32, w_zero=0.1),
        dict(n=2, c=45, h=5, w=6, o=33, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F32, x_zero=0.2, w_zero=0.2,
             zero_channel=True, garbage_tail=True),
        dict(n=1, c=64, h=4, w=4, o=8, k=3, stride=(1, 1), pads=(1, 1, 1, 1), dtype=F32, x_zero=1.0),
    ],
    ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items() if k != "dtype") + ("-fp16" if d["dtype"] == F16 else ""),
)
def test_conv_matches_contract(cuda_ops: None, case: dict) -> None:
    _conv_case(seed=zlib.crc32(repr(sorted(case.items())).encode()), **case)


@pytest.mark.parametrize("seed", range(12))
def test_conv_random_shapes_match_contract(cuda_ops: None, seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    k = int(rng.choice([1, 3]))
    h, w = int(rng.integers(k, 13)), int(rng.integers(k, 13))
    _conv_case(
        seed, n=int(rng.integers(1, 3)), c=int(rng.integers(1, 300)), h=h, w=w, o=int(rng.integers(1, 150)), k=k,
        stride=(int(rng.integers(1, 3)), int(rng.integers(1, 3))), pads=tuple(int(v) for v in rng.integers(0, k, 4)),
        dtype=F16 if seed % 2 else F32, x_zero=0.1 if seed % 3 == 0 else 0.0, w_zero=0.1 if seed % 4 == 0 else 0.0,
        zero_channel=seed % 5 == 0, garbage_tail=seed % 2 == 0,
    )


@pytest.mark.parametrize(
    "case",
    [
        dict(lead=(2, 50), k=192, o=576, dtype=F32),  # swin qkv at embed 192
        dict(lead=(64,), k=768, o=192, dtype=F16, x_zero=0.02),  # mlp.fc2: GELU underflow zeros
        dict(lead=(3,), k=33, o=7, dtype=F32, zero_channel=True, garbage_tail=True),
        dict(lead=(1,), k=1, o=1, dtype=F32),
        dict(lead=(5, 13), k=100, o=70, dtype=F32, x_zero=0.1, w_zero=0.05, garbage_tail=True),
    ],
    ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items() if k != "dtype") + ("-fp16" if d["dtype"] == F16 else ""),
)
def test_linear_matches_contract(cuda_ops: None, case: dict) -> None:
    _linear_case(seed=zlib.crc32(repr(sorted(case.items())).encode()), **case)


# --------------------------------------------------------------------------- behaviour


def test_cuda_agrees_with_cpu_kernels(cuda_ops: None) -> None:
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.standard_normal((2, 160, 12, 12)).astype(np.float32))
    pw = contract.pack_weight(rng.standard_normal((96, 160, 3, 3)).astype(np.float32))
    args = (torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha), torch.randn(96))
    y_cpu = torch.ops.bimaco.binary_conv2d(x, *args, [1, 1], [1, 1, 1, 1], 160, None)
    y_gpu = torch.ops.bimaco.binary_conv2d(x.cuda(), *(a.cuda() for a in args), [1, 1], [1, 1, 1, 1], 160, None)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-5, atol=1e-5 * float(y_cpu.abs().max()))


def test_runs_on_current_stream_and_under_cuda_graph(cuda_ops: None) -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((1, 64, 8, 8)).astype(np.float32)).cuda()
    pw = contract.pack_weight(rng.standard_normal((32, 64, 3, 3)).astype(np.float32))
    wb, a, b = torch.from_numpy(pw.bits).cuda(), torch.from_numpy(pw.alpha).cuda(), torch.randn(32).cuda()
    eager = torch.ops.bimaco.binary_conv2d(x, wb, a, b, [1, 1], [1, 1, 1, 1], 64, None)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        on_side = torch.ops.bimaco.binary_conv2d(x, wb, a, b, [1, 1], [1, 1, 1, 1], 64, None)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = torch.ops.bimaco.binary_conv2d(x, wb, a, b, [1, 1], [1, 1, 1, 1], 64, None)
    torch.cuda.current_stream().wait_stream(side)
    x.copy_(-x)  # replay must read the new input
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(on_side, eager)
    expect = torch.ops.bimaco.binary_conv2d(x, wb, a, b, [1, 1], [1, 1, 1, 1], 64, None)
    assert torch.equal(captured, expect)


def test_non_contiguous_input_and_empty_batch(cuda_ops: None) -> None:
    rng = np.random.default_rng(5)
    pw = contract.pack_weight(rng.standard_normal((8, 40)).astype(np.float32))
    wb, a, b = torch.from_numpy(pw.bits).cuda(), torch.from_numpy(pw.alpha).cuda(), torch.zeros(8).cuda()
    x = torch.randn(40, 6, device="cuda").t()  # [6, 40], not contiguous
    y = torch.ops.bimaco.binary_linear(x, wb, a, b, 40, None)
    ref = contract.binary_linear_reference(x.cpu().numpy(), pw.bits, pw.alpha, np.zeros(8, np.float32),
                                           in_features=40)
    np.testing.assert_allclose(y.cpu().numpy(), ref, rtol=1e-5, atol=1e-5)
    empty = torch.ops.bimaco.binary_linear(torch.empty(0, 40, device="cuda"), wb, a, b, 40, None)
    assert tuple(empty.shape) == (0, 8)


def test_bad_arguments_raise_clear_errors(cuda_ops: None) -> None:
    pw = contract.pack_weight(np.ones((4, 8, 3, 3), np.float32))
    wb, a, b = torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha), torch.zeros(4)
    x = torch.randn(1, 8, 5, 5, device="cuda")
    with pytest.raises(RuntimeError, match="wbits is on cpu"):
        torch.ops.bimaco.binary_conv2d(x, wb, a.cuda(), b.cuda(), [1, 1], [1, 1, 1, 1], 8, None)
    with pytest.raises(RuntimeError, match="too small"):
        torch.ops.bimaco.binary_conv2d(x[:, :, :1, :1], wb.cuda(), a.cuda(), b.cuda(), [1, 1], [0, 0, 0, 0], 8,
                                       None)
    with pytest.raises(RuntimeError, match="in_channels"):
        torch.ops.bimaco.binary_conv2d(x, wb.cuda(), a.cuda(), b.cuda(), [1, 1], [1, 1, 1, 1], 9, None)


# --------------------------------------------------------------------------- standalone self-test


def test_standalone_selftest(tmp_path: Path) -> None:
    nvcc = native.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: cannot build plugins_cpp/cuda/selftest.cu")
    major, minor = torch.cuda.get_device_capability()
    exe = tmp_path / "bimaco_cuda_selftest"
    sources = [str(p) for p in sorted((REPO / "plugins_cpp" / "cuda").glob("*.cu"))]
    build = subprocess.run(
        [nvcc, "-std=c++17", "-O2", f"-I{REPO / 'plugins_cpp' / 'include'}",
         f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}", *sources, "-o", str(exe)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe), "--cases", "80"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "PASSED" in run.stdout, run.stdout + run.stderr
