"""The fused layer ops (binary GEMM + RPReLU/SMB/LRMB epilogue) against the torch composition.

The binary part is held to the numpy contract in test_cpu_kernels.py; here the whole
layer is: the native fused kernel must equal the contract op followed by the side
branches as plain torch ops (the path every other device takes), per instruction set,
over random shapes, channel counts that are not multiples of 32 or of the SIMD width,
exact zeros, batches, 3-d linear inputs, non-contiguous inputs, and fp16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bimaco_deploy.errors import InputError
from bimaco_deploy.plugins import contract, torch_ops

pytestmark = pytest.mark.skipif(
    not torch_ops.ops_available(),
    reason=f"native bimaco ops not built: {torch_ops.unavailable_reason()} "
    "(run `python -m bimaco_deploy.plugins.native build`)",
)

ISAS = list(torch_ops.cpu_available_isas()) if torch_ops.ops_available() else []


@pytest.fixture(params=ISAS)
def isa(request):
    """Once per instruction set this CPU supports (each has its own epilogue build)."""
    torch_ops.set_cpu_isa(request.param)
    yield request.param
    torch_ops.set_cpu_isa("auto")


def _weights(o: int, c: int, k: int, rng: np.random.Generator, w_zero_frac: float = 0.0):
    wt = rng.standard_normal((o, c, k, k) if k else (o, c)).astype(np.float32)
    wt[rng.random(wt.shape) < w_zero_frac] = 0.0
    pw = contract.pack_weight(wt)
    wz = None if pw.zero is None else torch.from_numpy(pw.zero)
    bias = torch.from_numpy(rng.standard_normal(o).astype(np.float32))
    return torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha), bias, wz


def _side(o: int, c: int, rng: np.random.Generator, rprelu: bool, smb: bool, rank: int) -> torch_ops.SideBranches:
    def f32(*shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    rp = torch.stack([f32(o), torch.from_numpy(rng.uniform(-0.5, 0.5, o).astype(np.float32)), f32(o)]) if rprelu else None
    rowptr = col = val = None
    if smb:
        # nnz = 2 * max(o, c) as in the model, unevenly spread: some outputs get none
        nnz = 2 * max(o, c)
        rows = np.sort(rng.integers(0, o, nnz))
        rowptr = torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=o))]).astype(np.int32))
        col = torch.from_numpy(rng.integers(0, c, nnz).astype(np.int16))
        val = f32(nnz)
    down, up = (f32(rank, c), f32(o, rank)) if rank else (None, None)
    return torch_ops.SideBranches(rp, rowptr, col, val, down, up)


def _close(y: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> None:
    y64, r64 = y.double(), ref.double()
    scale = float(r64.abs().max()) + 1e-30
    torch.testing.assert_close(y64, r64, rtol=rtol, atol=rtol * scale)


def _composed_conv(x, wb, a, b, pads, c, wz, side):
    y = torch_ops.reference_binary_conv2d(x, wb, a, b, (1, 1), pads, c, wz)
    return torch_ops.reference_side_conv(x, y, side)


def _composed_linear(x, wb, a, b, k, wz, side):
    y = torch_ops.reference_binary_linear(x, wb, a, b, k, wz)
    return torch_ops.reference_side_linear(x, y, side)


layer_case = st.fixed_dictionaries(
    {
        "n": st.integers(1, 2),
        "c": st.sampled_from([1, 7, 32, 33, 65, 100]),
        "o": st.sampled_from([1, 3, 8, 9, 17, 40]),
        "k": st.sampled_from([1, 3]),
        "h": st.integers(1, 7),
        "w": st.integers(1, 70),  # > 64: a row spans two pixel chunks
        "rprelu": st.booleans(),
        "smb": st.booleans(),
        "rank": st.sampled_from([0, 1, 8]),
        "x_zero_frac": st.sampled_from([0.0, 0.3]),
        "w_zero_frac": st.sampled_from([0.0, 0.1]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=layer_case)
def test_fused_conv_equals_contract_op_then_torch_side_branches(isa, p):
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal((p["n"], p["c"], p["h"], p["w"])).astype(np.float32)
    x[rng.random(x.shape) < p["x_zero_frac"]] = 0.0
    x = torch.from_numpy(x)
    wb, a, b, wz = _weights(p["o"], p["c"], p["k"], rng, p["w_zero_frac"])
    side = _side(p["o"], p["c"], rng, p["rprelu"], p["smb"], p["rank"])
    pads = (p["k"] // 2,) * 4
    got = torch_ops.binary_conv2d_fused(x, wb, a, b, 1, pads, p["c"], wz, side)
    _close(got, _composed_conv(x, wb, a, b, pads, p["c"], wz, side))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=layer_case)
def test_fused_linear_equals_contract_op_then_torch_side_branches(isa, p):
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal((p["n"], p["h"] * p["w"], p["c"])).astype(np.float32)
    x[rng.random(x.shape) < p["x_zero_frac"]] = 0.0
    x = torch.from_numpy(x)
    wb, a, b, wz = _weights(p["o"], p["c"], 0, rng, p["w_zero_frac"])
    side = _side(p["o"], p["c"], rng, False, p["smb"], p["rank"])
    got = torch_ops.binary_linear_fused(x, wb, a, b, p["c"], wz, side)
    _close(got, _composed_linear(x, wb, a, b, p["c"], wz, side))


def test_fused_ops_take_non_contiguous_and_fp16_inputs():
    rng = np.random.default_rng(3)
    wb, a, b, wz = _weights(9, 33, 3, rng)
    side = _side(9, 33, rng, True, True, 8)
    base = torch.randn(2, 5, 33, 6)
    x = base.permute(0, 2, 1, 3)  # [2, 33, 5, 6], not contiguous
    assert not x.is_contiguous()
    ref = _composed_conv(x.contiguous(), wb, a, b, (1,) * 4, 33, wz, side)
    _close(torch_ops.binary_conv2d_fused(x, wb, a, b, 1, 1, 33, wz, side), ref)
    y16 = torch_ops.binary_conv2d_fused(x.half(), wb, a, b, 1, 1, 33, wz, side)
    assert y16.dtype == torch.float16
    _close(y16.float(), _composed_conv(x.half().float(), wb, a, b, (1,) * 4, 33, wz, side), rtol=2e-3)

    wbl, al, bl, wzl = _weights(17, 65, 0, rng)
    sidel = _side(17, 65, rng, False, True, 8)
    xl = torch.randn(65, 12).t()  # [12, 65], not contiguous
    _close(torch_ops.binary_linear_fused(xl, wbl, al, bl, 65, wzl, sidel),
           _composed_linear(xl.contiguous(), wbl, al, bl, 65, wzl, sidel))


def test_fused_conv_refuses_side_branches_that_cannot_align_with_the_output():
    rng = np.random.default_rng(4)
    wb, a, b, wz = _weights(8, 16, 3, rng)
    side = _side(8, 16, rng, True, True, 0)
    with pytest.raises(RuntimeError, match="stride 1 and an output the size of the input"):
        torch_ops.binary_conv2d_fused(torch.randn(1, 16, 8, 8), wb, a, b, 2, 1, 16, wz, side)
    # RPReLU alone reads no input: stride 2 is fine
    only_rp = torch_ops.SideBranches(rprelu=side.rprelu)
    x = torch.randn(1, 16, 8, 8)
    _close(torch_ops.binary_conv2d_fused(x, wb, a, b, 2, 1, 16, wz, only_rp),
           torch_ops.reference_side_conv(x, torch_ops.reference_binary_conv2d(x, wb, a, b, (2, 2), (1,) * 4, 16, wz),
                                         only_rp))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(smb_rowptr=torch.zeros(8, dtype=torch.int32)), r"smb_rowptr must be int32 \[9\]"),
        (dict(smb_col=torch.full((32,), 16, dtype=torch.int16)), r"smb_col\[0\] = 16 is not an input channel"),
        (dict(smb_col=torch.zeros(32, dtype=torch.int32)), r"smb_col must be int16 \[nnz\]"),
        (dict(smb_val=torch.zeros(5)), "smb_val must be float32"),
        (dict(smb_col=None), "SMB needs smb_rowptr, smb_col and smb_val"),
        (dict(lr_up=torch.zeros(8, 3)), r"lr_up \[out, rank\] must be float32"),
        (dict(rprelu=torch.zeros(3, 7)), "rprelu"),
    ],
)
def test_fused_op_rejects_a_malformed_side_table_with_a_message(change, message):
    rng = np.random.default_rng(5)
    wb, a, b, wz = _weights(8, 16, 3, rng)
    side = _side(8, 16, rng, True, True, 8)._replace(**change)
    with pytest.raises(RuntimeError, match=message):
        torch_ops.binary_conv2d_fused(torch.randn(1, 16, 4, 4), wb, a, b, 1, 1, 16, wz, side)


def test_linear_refuses_rprelu():
    rng = np.random.default_rng(6)
    wb, a, b, wz = _weights(8, 16, 0, rng)
    with pytest.raises(InputError, match="RPReLU belongs to conv layers"):
        torch_ops.binary_linear_fused(torch.randn(3, 16), wb, a, b, 16, wz,
                                      torch_ops.SideBranches(rprelu=torch.zeros(3, 8)))


def test_fused_ops_trace_with_their_fake_kernels():
    rng = np.random.default_rng(7)
    wb, a, b, wz = _weights(8, 16, 3, rng)
    side = _side(8, 16, rng, True, True, 8)
    x = torch.randn(2, 16, 5, 6)
    torch.library.opcheck(
        torch.ops.bimaco.binary_conv2d_fused.default, (x, wb, a, b, [1, 1], [1, 1, 1, 1], 16, wz, *side),
        test_utils=("test_schema", "test_faketensor"),
    )
    wbl, al, bl, wzl = _weights(8, 16, 0, rng)
    sidel = _side(8, 16, rng, False, True, 4)
    torch.library.opcheck(
        torch.ops.bimaco.binary_linear_fused.default, (torch.randn(2, 3, 16), wbl, al, bl, 16, wzl, *sidel[1:]),
        test_utils=("test_schema", "test_faketensor"),
    )
