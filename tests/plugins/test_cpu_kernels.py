"""The native CPU kernels (every instruction set this machine runs) against the numpy contract.

Ground truth: ``bimaco_deploy.plugins.contract.binary_conv2d_reference`` /
``binary_linear_reference``. Two kinds of checks:

* integer exactness: inputs built so that float rounding cannot hide an off-by-one in a
  popcount dot (values +-1 so s = 1 and y is an exact integer; or values in {-1, 0, +1}
  where one wrong count moves y by 2*s*alpha >= 2/C, far above the 0.25/C we allow);
* float parity on random data: ``rtol = 1e-5`` plus ``atol = 1e-5 * max|y_ref|``. The
  kernel sums the per-tap terms s*dot in float32 (the reference in float64), so
  elementwise error is about taps * 6e-8 * max|alpha*s*dot|; elements whose value cancels
  to near zero need the absolute term. float16 inputs allow 1e-3 (one fp16 ulp: both
  sides round the same float32 value, the reference after a float64 detour).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bimaco_deploy.plugins import contract, torch_ops

# Set by .ci/run once .ci/install-cpu-deps has provided the host and AArch64 cross compilers
# and qemu: every CPU kernel is then expected to run, and a test that would skip for lack of a
# tool (or of the built native ops) fails instead, so a broken install cannot pass as a skip.
REQUIRE_TOOLCHAIN = os.environ.get("BIMACO_REQUIRE_CPU_TOOLCHAIN") == "1"


def _missing(reason: str) -> None:
    """Skip for lack of a tool, or fail when CI promised it (BIMACO_REQUIRE_CPU_TOOLCHAIN=1)."""
    if REQUIRE_TOOLCHAIN:
        pytest.fail(f"{reason}; BIMACO_REQUIRE_CPU_TOOLCHAIN=1 expects it (.ci/install-cpu-deps)", pytrace=False)
    pytest.skip(reason)


_NOT_BUILT = (
    f"native bimaco ops not built: {torch_ops.unavailable_reason()} "
    "(run `python -m bimaco_deploy.plugins.native build`)"
)
# Under BIMACO_REQUIRE_CPU_TOOLCHAIN=1 nothing is skipped: test_native_ops_are_available fails.
pytestmark = pytest.mark.skipif(not torch_ops.ops_available() and not REQUIRE_TOOLCHAIN, reason=_NOT_BUILT)


def test_native_ops_are_available():
    if not torch_ops.ops_available():
        _missing(_NOT_BUILT)

CHANNELS = [1, 5, 31, 32, 33, 63, 64, 65, 100, 130]
ISAS = list(torch_ops.cpu_available_isas()) if torch_ops.ops_available() else []


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per instruction set this CPU supports, then restore auto choice."""
    torch_ops.set_cpu_isa(request.param)
    yield request.param
    torch_ops.set_cpu_isa("auto")


def _conv(x, pw_bits, alpha, bias, stride, pads, c, wzero=None):
    return torch_ops.binary_conv2d(
        torch.as_tensor(x),
        torch.from_numpy(pw_bits),
        torch.from_numpy(alpha),
        torch.from_numpy(bias),
        stride,
        pads,
        c,
        None if wzero is None else torch.from_numpy(wzero),
    )


def _close(y: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    scale = float(np.abs(ref.astype(np.float64)).max()) + 1e-30
    np.testing.assert_allclose(y.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=rtol * scale)


conv_case = st.fixed_dictionaries(
    {
        "n": st.integers(1, 3),
        "c": st.sampled_from(CHANNELS),
        "o": st.integers(1, 40),
        "k": st.sampled_from([1, 3]),
        "stride": st.sampled_from([1, 2]),
        "pads": st.tuples(*[st.integers(0, 2)] * 4),
        "h": st.integers(1, 9),
        "w": st.integers(1, 12),
        "x_zero_frac": st.sampled_from([0.0, 0.0, 0.2]),
        "w_zero_frac": st.sampled_from([0.0, 0.0, 0.1]),
        "dead_channel": st.booleans(),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def _make_conv(p):
    rng = np.random.default_rng(p["seed"])
    n, c, o, k = p["n"], p["c"], p["o"], p["k"]
    pads = p["pads"]
    # keep the output non-empty
    h = max(p["h"], k - pads[0] - pads[2])
    w = max(p["w"], k - pads[1] - pads[3])
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[rng.random(x.shape) < p["x_zero_frac"]] = 0.0
    wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
    wt[rng.random(wt.shape) < p["w_zero_frac"]] = 0.0
    if p["dead_channel"]:
        wt[rng.integers(o)] = 0.0  # an untrained out_layers.3-like channel: alpha = 0
    pw = contract.pack_weight(wt)
    bias = rng.standard_normal(o).astype(np.float32)
    return x, pw, bias, pads


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=conv_case)
def test_conv_matches_contract_reference_on_random_shapes(isa, p):
    x, pw, bias, pads = _make_conv(p)
    c, k, s = p["c"], p["k"], p["stride"]
    ref = contract.binary_conv2d_reference(
        x, pw.bits, pw.alpha, bias, in_channels=c, kernel_shape=(k, k), strides=(s, s), pads=pads, wzero=pw.zero
    )
    y = _conv(x, pw.bits, pw.alpha, bias, s, pads, c, pw.zero).numpy()
    assert y.shape == ref.shape
    _close(y, ref)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=conv_case)
def test_conv_integer_dots_are_exact(isa, p):
    """x in {-1, +1}, alpha 1, bias 0: s = 1 inside the image, so y is an exact integer sum of dots."""
    x, pw, _, pads = _make_conv(p)
    x = np.where(np.random.default_rng(p["seed"] + 1).random(x.shape) < 0.5, -1.0, 1.0).astype(np.float32)
    o, c, k, s = p["o"], p["c"], p["k"], p["stride"]
    ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
    _, dots = contract.binary_conv2d_reference(
        x, pw.bits, ones, zeros, in_channels=c, kernel_shape=(k, k), strides=(s, s), pads=pads, wzero=pw.zero,
        return_int=True,
    )
    # padded taps have s = 0: mask them out of the reference's per-tap dots
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    inside = np.zeros((h + pads[0] + pads[2], w + pads[1] + pads[3]), np.int64)
    inside[pads[0] : pads[0] + h, pads[1] : pads[1] + w] = 1
    ho, wo = dots.shape[-2:]
    expect = np.zeros((n, o, ho, wo), np.int64)
    for i in range(k):
        for j in range(k):
            m = inside[i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s]
            expect += dots[:, :, i, j].astype(np.int64) * m
    y = _conv(x, pw.bits, ones, zeros, s, pads, c, pw.zero).numpy()
    np.testing.assert_array_equal(y, expect.astype(np.float32))


@pytest.mark.parametrize("c", CHANNELS)
def test_conv_zero_masks_resolve_every_count(isa, c):
    """Values in {-1, 0, +1}, zeros in X and scattered zero weights: y*C/nnz-scale is integral.

    One wrong popcount moves an output by 2*s >= 2/C; we allow 0.25/C, far above rounding.
    """
    rng = np.random.default_rng(c)
    x = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), size=(2, c, 5, 6), p=[0.4, 0.2, 0.4])
    wt = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), size=(7, c, 3, 3), p=[0.45, 0.1, 0.45])
    if not (wt == 0).any():
        wt[0, 0, 0, 0] = 0.0
    pw = contract.pack_weight(wt)
    ones, zeros = np.ones(7, np.float32), np.zeros(7, np.float32)
    ref = contract.binary_conv2d_reference(
        x, pw.bits, ones, zeros, in_channels=c, kernel_shape=(3, 3), strides=(1, 1), pads=(1, 0, 0, 1),
        wzero=pw.zero,
    )
    y = _conv(x, pw.bits, ones, zeros, 1, (1, 0, 0, 1), c, pw.zero).numpy()
    assert np.abs(y - ref).max() < 0.25 / c


@pytest.mark.parametrize("layer", ["conv1x1", "linear"])
def test_zeros_in_one_pixel_chunk_take_the_masked_count_there_only(isa, layer):
    """1x1 convs and linears run chunk by chunk (64 pixels), each chunk choosing the masked
    kernel only if its own activations hold an exact zero. Zeros in the middle chunk of
    three (and a partial last chunk, in two images) must be counted there and nowhere else.
    Values in {-1, 0, +1}: one wrong count moves an output by >= 2/C, we allow 0.25/C."""
    rng = np.random.default_rng(11)
    c, o, hw = 70, 19, 150  # chunks [0, 64), [64, 128), [128, 150)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), size=(2, c, hw))
    x[1, rng.integers(0, c, 5), rng.integers(64, 128, 5)] = 0.0
    wt = rng.choice(np.array([-1.0, 1.0], np.float32), size=(o, c))
    pw = contract.pack_weight(wt)
    ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
    if layer == "conv1x1":
        x4 = x.reshape(2, c, 10, 15)
        ref = contract.binary_conv2d_reference(
            x4, pw.bits.reshape(o, 1, 1, -1), ones, zeros, in_channels=c, kernel_shape=(1, 1), strides=(1, 1),
            pads=(0, 0, 0, 0),
        )
        y = _conv(x4, pw.bits.reshape(o, 1, 1, -1), ones, zeros, 1, 0, c).numpy()
    else:
        xr = np.ascontiguousarray(x.transpose(0, 2, 1))  # [2, hw, c]
        ref = contract.binary_linear_reference(xr, pw.bits, ones, zeros, in_features=c)
        y = torch_ops.binary_linear(
            torch.from_numpy(xr), torch.from_numpy(pw.bits), torch.from_numpy(ones), torch.from_numpy(zeros), c
        ).numpy()
    assert np.abs(y - ref).max() < 0.25 / c


@pytest.mark.parametrize("c", [160, 190, 300, 470, 640, 760, 950, 1280])
def test_conv_word_counts_with_specialised_kernels(isa, c):
    """Channel counts whose word counts (5, 6, 10, 15, 20, 24, 30, 40) get compile-time kernels."""
    rng = np.random.default_rng(c)
    x = rng.standard_normal((1, c, 5, 7)).astype(np.float32)
    pw = contract.pack_weight(rng.standard_normal((19, c, 3, 3)).astype(np.float32))
    bias = rng.standard_normal(19).astype(np.float32)
    ref = contract.binary_conv2d_reference(
        x, pw.bits, pw.alpha, bias, in_channels=c, kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)
    )
    _close(_conv(x, pw.bits, pw.alpha, bias, 1, 1, c).numpy(), ref)
    xs = np.where(x < 0, -1.0, 1.0).astype(np.float32)  # s = 1: exact integer sums
    ones, zeros = np.ones(19, np.float32), np.zeros(19, np.float32)
    ref_int = contract.binary_conv2d_reference(
        xs, pw.bits, ones, zeros, in_channels=c, kernel_shape=(3, 3), strides=(1, 1), pads=(0, 0, 0, 0)
    )
    np.testing.assert_array_equal(_conv(xs, pw.bits, ones, zeros, 1, 0, c).numpy(), ref_int)


def test_tail_bits_in_weights_do_not_count(isa):
    """Garbage in the unused bits of the last word must not change the result (contract)."""
    rng = np.random.default_rng(3)
    c = 37
    x = rng.standard_normal((1, c, 6, 6)).astype(np.float32)
    pw = contract.pack_weight(rng.standard_normal((9, c, 3, 3)).astype(np.float32))
    bias = np.zeros(9, np.float32)
    clean = _conv(x, pw.bits, pw.alpha, bias, 1, 1, c).numpy()
    dirty_bits = pw.bits.copy()
    dirty_bits[..., -1] |= np.int32(~((1 << (c - 32)) - 1))
    dirty = _conv(x, dirty_bits, pw.alpha, bias, 1, 1, c).numpy()
    np.testing.assert_array_equal(clean, dirty)
    # and through the masked path (an exact zero in x switches it on)
    x[0, 0, 2, 2] = 0.0
    np.testing.assert_array_equal(
        _conv(x, pw.bits, pw.alpha, bias, 1, 1, c).numpy(), _conv(x, dirty_bits, pw.alpha, bias, 1, 1, c).numpy()
    )


def test_conv_accepts_non_contiguous_and_fp16_inputs(isa):
    rng = np.random.default_rng(5)
    c, o = 65, 12
    base = torch.from_numpy(rng.standard_normal((2, 9, 14, c)).astype(np.float32))
    x = base.permute(0, 3, 1, 2)[:, :, :, ::2]  # channels-last storage, strided width
    assert not x.is_contiguous()
    pw = contract.pack_weight(rng.standard_normal((o, c, 3, 3)).astype(np.float32))
    bias = rng.standard_normal(o).astype(np.float32)
    ref = contract.binary_conv2d_reference(
        x.contiguous().numpy(), pw.bits, pw.alpha, bias, in_channels=c, kernel_shape=(3, 3), strides=(2, 2),
        pads=(1, 1, 1, 1),
    )
    _close(_conv(x, pw.bits, pw.alpha, bias, 2, 1, c).numpy(), ref)

    xh = x.half()
    y16 = _conv(xh, pw.bits, pw.alpha, bias, 2, 1, c)
    assert y16.dtype == torch.float16
    ref16 = contract.binary_conv2d_reference(
        xh.contiguous().numpy(), pw.bits, pw.alpha, bias, in_channels=c, kernel_shape=(3, 3), strides=(2, 2),
        pads=(1, 1, 1, 1),
    )
    _close(y16.numpy(), ref16, rtol=1e-3)


linear_case = st.fixed_dictionaries(
    {
        "k": st.sampled_from(CHANNELS + [192, 640, 1280]),
        "o": st.integers(1, 70),
        "lead": st.sampled_from([(), (1,), (5,), (3, 7), (2, 1, 65)]),
        "x_zero_frac": st.sampled_from([0.0, 0.0, 0.2]),
        "w_zero_frac": st.sampled_from([0.0, 0.1]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=linear_case)
def test_linear_matches_contract_reference(isa, p):
    rng = np.random.default_rng(p["seed"])
    k, o = p["k"], p["o"]
    x = rng.standard_normal(p["lead"] + (k,)).astype(np.float32)
    x[rng.random(x.shape) < p["x_zero_frac"]] = 0.0
    wt = rng.standard_normal((o, k)).astype(np.float32)
    wt[rng.random(wt.shape) < p["w_zero_frac"]] = 0.0
    pw = contract.pack_weight(wt)
    bias = rng.standard_normal(o).astype(np.float32)
    ref, dots = contract.binary_linear_reference(
        x, pw.bits, pw.alpha, bias, in_features=k, wzero=pw.zero, return_int=True
    )
    wz = None if pw.zero is None else torch.from_numpy(pw.zero)
    y = torch_ops.binary_linear(
        torch.from_numpy(x), torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha), torch.from_numpy(bias), k, wz
    ).numpy()
    assert y.shape == ref.shape
    _close(y, ref)
    # exact dots: with alpha 1 and bias 0 the output divided by s is the integer dot
    xs = np.where(rng.random(x.shape) < 0.5, -1.0, 1.0).astype(np.float32)
    _, dots = contract.binary_linear_reference(xs, pw.bits, pw.alpha, bias, in_features=k, wzero=pw.zero,
                                               return_int=True)
    y1 = torch_ops.binary_linear(
        torch.from_numpy(xs), torch.from_numpy(pw.bits), torch.ones(o), torch.zeros(o), k, wz
    ).numpy()
    np.testing.assert_array_equal(y1, dots.astype(np.float32))


def test_results_do_not_depend_on_thread_count(isa):
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.standard_normal((2, 100, 17, 19)).astype(np.float32))
    pw = contract.pack_weight(rng.standard_normal((45, 100, 3, 3)).astype(np.float32))
    bias = np.zeros(45, np.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = _conv(x, pw.bits, pw.alpha, bias, 1, 1, 100)
        torch.set_num_threads(2)
        y2 = _conv(x, pw.bits, pw.alpha, bias, 1, 1, 100)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, y2)


def test_every_isa_is_reported_and_auto_picks_the_fastest_available():
    isas = torch_ops.cpu_available_isas()
    assert "scalar" in isas
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    if " avx2 " in flags and " fma " in flags:
        assert "avx2" in isas
        assert torch_ops.cpu_isa() in ("avx2", "avx512")
    if " avx512vpopcntdq " in flags and " avx512f " in flags:
        assert torch_ops.cpu_isa() == "avx512"


# --------------------------------------------------------------------------- standalone self-test

_SRC = __import__("pathlib").Path(__file__).resolve().parents[2] / "plugins_cpp"


def _compile_selftest(cxx: str, out, extra=()):
    import subprocess

    srcs = sorted(str(p) for p in (_SRC / "cpu").glob("*.cpp"))
    cmd = [cxx, "-std=c++17", "-O2", f"-I{_SRC / 'include'}", *srcs, "-o", str(out), "-pthread", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_standalone_selftest_passes_on_this_cpu(tmp_path):
    """The framework-free kernels against a naive C++ implementation, every ISA this CPU runs."""
    import shutil
    import subprocess

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        _missing("no C++ compiler on PATH")
    exe = tmp_path / "selftest"
    _compile_selftest(cxx, exe)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 failures" in proc.stdout


@pytest.mark.slow
def test_neon_kernel_passes_selftest_under_qemu(tmp_path):
    """The AArch64 NEON kernel, cross-compiled and run under qemu user-mode emulation."""
    import shutil
    import subprocess

    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64-static")
    if cxx is None or qemu is None:
        _missing("needs aarch64-linux-gnu-g++ and qemu-aarch64-static "
                 "(`make system-deps`, or apt-get install g++-aarch64-linux-gnu qemu-user-static)")
    exe = tmp_path / "selftest_arm"
    _compile_selftest(cxx, exe, ["-static"])
    proc = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "neon" in proc.stdout and "0 failures" in proc.stdout


# --------------------------------------------------------------------------- ISA containment

# x86 instruction classes a baseline x86-64 CPU may lack, by their encoding: EVEX (AVX-512)
# starts with 0x62, VEX (AVX, AVX2, FMA) with 0xc4/0xc5 (after segment/address-size prefixes
# at most); POPCNT by its mnemonic.
_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x67}
# the instruction classes each kernel file is built for (kernels_<isa>.cpp); others: none
_OWN = {"avx512": {"evex", "vex", "popcnt"}, "avx2": {"vex", "popcnt"}, "popcnt": {"popcnt"}}


def _insn_class(raw: str, mnemonic: str):
    b = [int(x, 16) for x in raw.split()]
    while b and b[0] in _PREFIXES:
        b = b[1:]
    if b and b[0] == 0x62:
        return "evex"
    if b and b[0] in (0xC4, 0xC5):
        return "vex"
    return "popcnt" if mnemonic.startswith("popcnt") else None


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["-O0", "-O2", "-O3"])
def test_isa_specific_code_stays_in_its_own_kernel(tmp_path, opt):
    """No AVX-512 (or AVX2, or POPCNT) instruction outside the functions only their ISA runs.

    Each kernels_<isa>.cpp is compiled with its own target flags. Any function of it that the
    linker may share with other object files (an inline function or template instance with
    external linkage: a weak symbol, one copy kept for all) must be plain x86-64, or a CPU
    without that ISA could run it from the portable path. So the ISA's instructions may only
    sit in that file's local functions and its own entry points (``*_avx2``, ...). At -O0
    nothing is inlined, which is where such sharing shows (a debug build).
    """
    import platform
    import re
    import shutil
    import subprocess

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"checks x86-64 object code; this machine is {platform.machine()}")
    cxx, nm, objdump = shutil.which("g++"), shutil.which("nm"), shutil.which("objdump")
    if cxx is None or nm is None or objdump is None:
        _missing("needs g++, nm and objdump (binutils) on PATH")
    srcs = sorted((_SRC / "cpu").glob("kernels_*.cpp")) + [_SRC / "cpu" / "binary_ops_cpu.cpp"]
    leaks, seen = [], set()
    for src in srcs:
        obj = tmp_path / f"{src.stem}.o"
        cmd = [cxx, "-std=c++17", opt, "-fPIC", "-w", f"-I{_SRC / 'include'}", "-c", str(src), "-o", str(obj)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        binding = {}
        for line in subprocess.run([nm, "-C", str(obj)], capture_output=True, text=True, check=True).stdout.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3:
                binding[parts[2]] = parts[1]
        dis = subprocess.run([objdump, "-d", "-C", "--insn-width=16", str(obj)], capture_output=True, text=True,
                             check=True).stdout
        isa = src.stem[len("kernels_"):] if src.stem.startswith("kernels_") else None
        own = _OWN.get(isa, set())
        found = {}
        sym = None
        for line in dis.splitlines():
            m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
            if m:
                sym = m.group(1)
                continue
            m = re.match(r"^\s+[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(\S+)", line)
            if m and sym:
                k = _insn_class(m.group(1), m.group(2))
                if k:
                    found.setdefault(sym, set()).add(k)
        for name, kinds in found.items():
            seen |= kinds
            b = binding.get(name, "?")
            private = b in ("t", "b") or (b == "T" and name.split("(")[0].endswith(f"_{isa}"))
            if not (private and kinds <= own):
                leaks.append(f"{src.name}: {b} {name[:150]} uses {sorted(kinds)}")
    assert not leaks, "\n".join(leaks)
    assert {"evex", "vex", "popcnt"} <= seen, f"the check saw only {sorted(seen)}: is it still reading the code?"
