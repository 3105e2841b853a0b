"""The torch-facing layer: wrappers, argument checks, fake kernels, the reference fallback, the build."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bimaco_deploy.errors import InputError
from bimaco_deploy.plugins import contract, native, torch_ops

needs_native = pytest.mark.skipif(
    not torch_ops.ops_available(),
    reason=f"native bimaco ops not built: {torch_ops.unavailable_reason()}",
)


def _params(o=6, c=40, k=3, seed=0, zeros=False):
    rng = np.random.default_rng(seed)
    wt = rng.standard_normal((o, c, k, k) if k else (o, c)).astype(np.float32)
    if zeros:
        wt[rng.random(wt.shape) < 0.1] = 0.0
    pw = contract.pack_weight(wt)
    wz = None if pw.zero is None else torch.from_numpy(pw.zero)
    return torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha), torch.randn(o), wz


def test_reference_fallback_matches_numpy_contract():
    """The pure-torch fallback is itself held to the numpy contract (it runs when no compiler exists)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 40, 7, 9)).astype(np.float32)
    x[0, :3, 1, 1] = 0.0
    wb, a, b, wz = _params(zeros=True)
    ref = contract.binary_conv2d_reference(
        x, wb.numpy(), a.numpy(), b.numpy(), in_channels=40, kernel_shape=(3, 3), strides=(2, 1),
        pads=(1, 0, 2, 1), wzero=None if wz is None else wz.numpy(),
    )
    y = torch_ops.reference_binary_conv2d(torch.from_numpy(x), wb, a, b, (2, 1), (1, 0, 2, 1), 40, wz)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())

    xl = rng.standard_normal((3, 5, 40)).astype(np.float32)
    wb, a, b, wz = _params(k=0, zeros=True)
    refl = contract.binary_linear_reference(xl, wb.numpy(), a.numpy(), b.numpy(), in_features=40,
                                            wzero=None if wz is None else wz.numpy())
    yl = torch_ops.reference_binary_linear(torch.from_numpy(xl), wb, a, b, 40, wz)
    np.testing.assert_allclose(yl.numpy(), refl, rtol=1e-5, atol=1e-5 * np.abs(refl).max())


def test_missing_native_library_warns_once_and_still_computes(monkeypatch):
    monkeypatch.setattr(torch_ops, "_available", False)
    monkeypatch.setattr(torch_ops, "_load_error", "libbimaco_torch_cpu.so is not built (test)")
    monkeypatch.setattr(torch_ops, "_warned", set())
    wb, a, b, _ = _params()
    x = torch.randn(1, 40, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = torch_ops.binary_conv2d(x, wb, a, b, 1, 1, 40)
        y2 = torch_ops.binary_conv2d(x, wb, a, b, 1, 1, 40)
    fallback = [w for w in caught if issubclass(w.category, torch_ops.NativeOpsFallbackWarning)]
    assert len(fallback) == 1
    assert "not built" in str(fallback[0].message)
    assert torch.equal(y1, y2)
    assert torch.equal(y1, torch_ops.reference_binary_conv2d(x, wb, a, b, (1, 1), (1, 1, 1, 1), 40))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=torch.randn(1, 39, 5, 5)), "39 channels"),
        (dict(x=torch.randn(40, 5, 5)), "[N, C, H, W]"),
        (dict(x=torch.randn(1, 40, 5, 5).double()), "float32/float16"),
        (dict(x=torch.randn(1, 40, 1, 1), padding=0), "too small"),
        (dict(alpha=torch.ones(5)), "alpha must be float32 [6]"),
        (dict(wbits=torch.zeros(6, 3, 3, 1, dtype=torch.int32)), "cannot hold 40 channels"),
        (dict(wzero=torch.zeros(6, 3, 3, 1, dtype=torch.int32)), "wzero must be int32 of shape (6, 3, 3, 2)"),
        (dict(stride=0), "stride"),
        (dict(padding=(1, 1, 1)), "padding"),
    ],
)
def test_bad_conv_arguments_raise_input_error_naming_the_shape(kwargs, message):
    wb, a, b, _ = _params()
    args = dict(x=torch.randn(1, 40, 5, 5), wbits=wb, alpha=a, bias=b, stride=1, padding=1, in_channels=40)
    if "x" in kwargs and "in_channels" not in kwargs:
        args["in_channels"] = 40
    args.update(kwargs)
    with pytest.raises(InputError, match=None) as err:
        torch_ops.binary_conv2d(**args)
    assert message in str(err.value)


def test_bad_linear_arguments_raise_input_error():
    wb, a, b, _ = _params(k=0)
    with pytest.raises(InputError, match="last dim 41"):
        torch_ops.binary_linear(torch.randn(3, 41), wb, a, b, 40)
    with pytest.raises(InputError, match="wbits must be int32 with 2 dims"):
        torch_ops.binary_linear(torch.randn(3, 40), wb.unsqueeze(0), a, b, 40)


@needs_native
def test_native_matches_reference_fallback():
    wb, a, b, wz = _params(zeros=True, seed=4)
    x = torch.randn(2, 40, 9, 8)
    y = torch_ops.binary_conv2d(x, wb, a, b, (1, 2), (0, 1, 1, 0), 40, wz)
    r = torch_ops.reference_binary_conv2d(x, wb, a, b, (1, 2), (0, 1, 1, 0), 40, wz)
    torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))


@needs_native
def test_ops_pass_torch_library_opcheck_for_schema_and_fake_kernels():
    wb, a, b, wz = _params(zeros=True)
    x = torch.randn(1, 40, 6, 7)
    torch.library.opcheck(
        torch.ops.bimaco.binary_conv2d.default,
        (x, wb, a, b, [2, 1], [1, 1, 0, 1], 40, wz),
        test_utils=("test_schema", "test_faketensor"),
    )
    wbl, al, bl, _ = _params(k=0)
    torch.library.opcheck(
        torch.ops.bimaco.binary_linear.default,
        (torch.randn(2, 3, 40), wbl, al, bl, 40, None),
        test_utils=("test_schema", "test_faketensor"),
    )


@needs_native
def test_ops_compile_with_torch_compile_fullgraph():
    wb, a, b, _ = _params()

    def f(x):
        return torch_ops.binary_conv2d(x, wb, a, b, 1, 1, 40).relu()

    x = torch.randn(1, 40, 8, 8)
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), f(x))


def test_build_without_compiler_says_why_and_exits_zero(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BIMACO_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert native.main(["build"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "no C++ compiler" in out
    assert not list(tmp_path.glob("*.so"))


@needs_native
def test_build_is_incremental_when_sources_are_unchanged():
    results = native.build()
    assert results[0].status == "up-to-date", results[0]
    assert native.library_path("cpu") is not None


def test_native_library_is_loaded_wherever_a_compiler_exists():
    """Guards the skips above: with a compiler (so `make build` built it), the native ops must load."""
    if native.find_cxx() is None:
        pytest.skip("no C++ compiler: the pure-torch fallback is the expected path here")
    assert torch_ops.ops_available(), torch_ops.unavailable_reason()
    assert torch_ops.cpu_isa() in torch_ops.cpu_available_isas()


def test_the_isa_environment_variable_forces_the_kernels_for_the_process(tmp_path):
    """BIMACO_CPU_ISA runs the whole suite on another ISA from one machine; a bad value is an error."""
    import subprocess
    import sys

    code = "from bimaco_deploy.plugins import torch_ops as t; print(t.ops_available(), t.cpu_isa())"
    env = {**__import__("os").environ, "BIMACO_CPU_ISA": "scalar"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if "False" in out.stdout:
        pytest.skip(f"native ops not built: {out.stdout}")
    assert out.stdout.split() == ["True", "scalar"], out.stderr[-2000:]
    env["BIMACO_CPU_ISA"] = "z80"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "BIMACO_CPU_ISA='z80' is not available on this CPU; available: scalar" in bad.stderr
