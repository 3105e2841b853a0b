"""The fused side branches: one contract, three implementations held to it.

contract.side_branches_reference (numpy, float64) is the maths of the ``rprelu`` / ``smb``
/ ``lrmb_rank`` attributes. Here it is held to the CPU fused ops (torch.ops.bimaco.*_fused,
the packed backend's kernels), the exporter's fused nodes are fed to those CPU ops, and,
on a GPU, the CUDA epilogue (the TensorRT plugin's kernels, through the same torch
schemas) is held to the CPU ops. The portable expansion of a fused node is covered in
tests/export/test_portable_ops.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bimaco_deploy.plugins import contract, torch_ops

from conftest import need as _need

native = pytest.mark.skipif(
    not torch_ops.ops_available(),
    reason=f"native bimaco ops not built: {torch_ops.unavailable_reason()} "
    "(run `python -m bimaco_deploy.plugins.native build`)",
)


def _tables(rng: np.random.Generator, o: int, c: int, *, rprelu: bool, smb: bool, rank: int) -> dict:
    """Side tables in the contract's form (int32 column pairs), float32."""
    out = {}
    if rprelu:
        out["rprelu"] = np.stack([rng.standard_normal(o), rng.uniform(-0.5, 0.5, o), rng.standard_normal(o)]
                                 ).astype(np.float32)
    if smb:
        nnz = 2 * max(o, c)
        rows = np.sort(rng.integers(0, o, nnz))
        out["smb_rowptr"], out["smb_col"] = contract.smb_csr(np.bincount(rows, minlength=o), rng.integers(0, c, nnz))
        out["smb_val"] = (0.3 * rng.standard_normal(nnz)).astype(np.float32)
    if rank:
        out["lr_down"] = (0.2 * rng.standard_normal((rank, c))).astype(np.float32)
        out["lr_up"] = (0.2 * rng.standard_normal((o, rank))).astype(np.float32)
    return out


def _op_args(t: dict, conv: bool, o: int, device: str = "cpu", dtype=torch.float32) -> list:
    """The fused torch op's side arguments from contract tables: int32 row starts [O + 1] and
    the int16 column table, which the contract's column words are byte for byte."""
    def f(name):
        return None if name not in t else torch.from_numpy(t[name]).to(device=device, dtype=dtype)

    rowptr = col = val = None
    if "smb_rowptr" in t:
        starts = contract.unpack_halves(t["smb_rowptr"], o + 1)
        nnz = int(starts[-1])
        rowptr = torch.from_numpy(starts.astype(np.int32)).to(device)
        col = torch.from_numpy(t["smb_col"].view("<i2")[:nnz].copy()).to(device)
        val = f("smb_val")
    side = [rowptr, col, val, f("lr_down"), f("lr_up")]
    return ([f("rprelu")] if conv else []) + side


def _close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (np.abs(want).max() + 1e-30))


def _packed(rng, o, c, k):
    w = rng.standard_normal((o, c, k, k) if k else (o, c)).astype(np.float32)
    pw = contract.pack_weight(w)
    return pw, rng.standard_normal(o).astype(np.float32)


CONV = [  # c, o, h, w, rprelu, smb, rank
    (40, 24, 6, 7, True, True, 8),
    (33, 70, 5, 5, True, False, 4),
    (160, 32, 4, 4, False, True, 0),
    (7, 9, 3, 8, True, True, 11),
]


@native
@pytest.mark.parametrize("c,o,h,w,rprelu,smb,rank", CONV)
def test_cpu_fused_conv_is_the_contract(c, o, h, w, rprelu, smb, rank):
    rng = np.random.default_rng(c * 100 + o)
    pw, bias = _packed(rng, o, c, 3)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = 0.0
    t = _tables(rng, o, c, rprelu=rprelu, smb=smb, rank=rank)
    kw = dict(in_channels=c, kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    core = contract.binary_conv2d_reference(x, pw.bits, pw.alpha, bias, **kw)
    want = contract.side_branches_reference(x, core, conv=True, **t)
    got = torch.ops.bimaco.binary_conv2d_fused(
        torch.from_numpy(x), torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha), torch.from_numpy(bias),
        [1, 1], [1, 1, 1, 1], c, None, *_op_args(t, conv=True, o=o)).numpy()
    _close(got, want)


@native
@pytest.mark.parametrize("k,o,lead,smb,rank", [(45, 19, (3,), True, 4), (192, 64, (2, 5), True, 8), (70, 9, (4,), False, 3)])
def test_cpu_fused_linear_is_the_contract(k, o, lead, smb, rank):
    rng = np.random.default_rng(k + o)
    pw, bias = _packed(rng, o, k, 0)
    x = rng.standard_normal(lead + (k,)).astype(np.float32)
    t = _tables(rng, o, k, rprelu=False, smb=smb, rank=rank)
    core = contract.binary_linear_reference(x, pw.bits, pw.alpha, bias, in_features=k)
    want = contract.side_branches_reference(x, core, conv=False, **t)
    got = torch.ops.bimaco.binary_linear_fused(
        torch.from_numpy(x), torch.from_numpy(pw.bits), torch.from_numpy(pw.alpha), torch.from_numpy(bias), k, None,
        *_op_args(t, conv=False, o=o)).numpy()
    _close(got, want)


def test_side_reference_order_of_additions():
    """Branch totals are added in the contract's order (conv: SMB then LRMB; linear: LRMB then
    SMB): with an LRMB that cancels the core and a small SMB, only the order decides whether
    the SMB survives the rounding (3 is below the spacing of doubles near 1e20)."""
    t = {"smb_rowptr": contract.pack_halves([0, 1]), "smb_col": contract.pack_halves([1]),
         "smb_val": np.array([3.0], np.float32), "lr_down": np.array([[0.0, 1.0]], np.float32),
         "lr_up": np.array([[-1.0e20]], np.float32)}
    core = np.array([[1.0e20]], np.float32)
    lin = contract.side_branches_reference(np.array([[0.0, 1.0]], np.float32), core, conv=False, **t)
    conv = contract.side_branches_reference(np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, 1),
                                            core.reshape(1, 1, 1, 1), conv=True, **t)
    assert lin.reshape(-1)[0] == 3.0 and conv.reshape(-1)[0] == 0.0
    with pytest.raises(ValueError, match="RPReLU belongs to conv"):
        contract.side_branches_reference(np.zeros((1, 2), np.float32), core, conv=False,
                                         rprelu=np.zeros((3, 1), np.float32))


@native
@pytest.mark.parametrize("key", ["conv3x3", "linear3d", "conv1x1", "linear2d"])
def test_exported_fused_node_runs_on_the_cpu_op(key):
    """The tables the exporter writes into a fused unet.onnx node, fed to the CPU fused op,
    reproduce the original layer (layers.npz, teacher-forced)."""
    import onnx

    from bimaco_deploy.export.layer_params import StateReader, read_binary_conv, read_binary_linear, state_to_numpy
    from bimaco_deploy.export.onnx_nodes import single_layer_model
    from bimaco_deploy.models.checkpoint import read_state_dict

    state = state_to_numpy(read_state_dict(_need("bimacosr_tiny.pth")))
    z = np.load(_need("layers.npz"))
    name, x, y = str(z[f"{key}_name"]), z[f"{key}_input"], z[f"{key}_output"]
    w = state[name + ".weight"]
    reader = StateReader(state)
    conv = w.ndim == 4
    layer = (read_binary_conv(reader, name, w.shape[1], w.shape[0], w.shape[2], 1, w.shape[2] // 2) if conv
             else read_binary_linear(reader, name, w.shape[1], w.shape[0]))
    model = single_layer_model(layer, portable=False, x_rank=x.ndim, fuse=True)
    node = next(n for n in model.graph.node if n.domain == contract.DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    layout = contract.OPS[node.op_type].layout(attrs, len(node.input))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    t = {n: np.array(inits[node.input[i]]) for n, i in layout.items() if n != "X"}  # writable copies
    wz = None if "Wzero" not in t else torch.from_numpy(t["Wzero"])
    core = [torch.from_numpy(x), torch.from_numpy(t["Wbits"]), torch.from_numpy(t["alpha"]), torch.from_numpy(t["bias"])]
    if conv:
        k = int(attrs["kernel_shape"][0])
        got = torch.ops.bimaco.binary_conv2d_fused(*core, [1, 1], [k // 2] * 4, int(attrs["in_channels"]), wz,
                                                   *_op_args(t, conv=True, o=layer.out_channels))
    else:
        got = torch.ops.bimaco.binary_linear_fused(*core, int(attrs["in_features"]), wz,
                                                   *_op_args(t, conv=False, o=layer.out_channels))
    _close(got.numpy(), y)


# --------------------------------------------------------------------------- CUDA (the plugin's epilogue)

cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs an NVIDIA GPU and a CUDA build of torch (torch.cuda.is_available() is False)")


@pytest.fixture(scope="module")
def cuda_ops():
    from bimaco_deploy.plugins import native as nat

    if nat.find_nvcc() is None:
        pytest.skip("nvcc not found: cannot build the CUDA op library")
    nat.build()
    if not torch_ops.cuda_ops_available():
        pytest.fail(f"CUDA op library not loaded: {nat.load_libraries()}")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("c,o,h,w,rprelu,smb,rank", CONV)
def test_cuda_fused_conv_matches_cpu(cuda_ops, dtype, c, o, h, w, rprelu, smb, rank):
    rng = np.random.default_rng(c * 7 + o)
    pw, bias = _packed(rng, o, c, 3)
    x = rng.standard_normal((3, c, h, w)).astype(np.float32)
    x[0][rng.random(x[0].shape) < 0.05] = 0.0  # masked tiles beside tensor-core tiles
    t = _tables(rng, o, c, rprelu=rprelu, smb=smb, rank=rank)
    if dtype == torch.float16:  # inputs exactly representable in both runs
        x = x.astype(np.float16).astype(np.float32)
        t = {k: (v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v) for k, v in t.items()}
    args = lambda dev, dt: [torch.from_numpy(x).to(dev, dt), torch.from_numpy(pw.bits).to(dev),  # noqa: E731
                            torch.from_numpy(pw.alpha).to(dev), torch.from_numpy(bias).to(dev)]
    ref = torch.ops.bimaco.binary_conv2d_fused(*args("cpu", torch.float32), [1, 1], [1, 1, 1, 1], c, None,
                                               *_op_args(t, conv=True, o=o)).numpy()
    got = torch.ops.bimaco.binary_conv2d_fused(*args("cuda", dtype), [1, 1], [1, 1, 1, 1], c, None,
                                               *_op_args(t, conv=True, o=o, device="cuda", dtype=dtype))
    _close(got.float().cpu().numpy(), ref, rtol=1e-5 if dtype == torch.float32 else 2e-3)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("k,o,rows,smb,rank", [(192, 576, 130, True, 8), (768, 192, 200, True, 8), (45, 19, 7, False, 3)])
def test_cuda_fused_linear_matches_cpu(cuda_ops, dtype, k, o, rows, smb, rank):
    rng = np.random.default_rng(k * 3 + o)
    pw, bias = _packed(rng, o, k, 0)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x[:3][rng.random((3, k)) < 0.01] = 0.0  # GELU-like zeros in one tile
    t = _tables(rng, o, k, rprelu=False, smb=smb, rank=rank)
    if dtype == torch.float16:
        x = x.astype(np.float16).astype(np.float32)
        t = {kk: (v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v) for kk, v in t.items()}
    args = lambda dev, dt: [torch.from_numpy(x).to(dev, dt), torch.from_numpy(pw.bits).to(dev),  # noqa: E731
                            torch.from_numpy(pw.alpha).to(dev), torch.from_numpy(bias).to(dev)]
    ref = torch.ops.bimaco.binary_linear_fused(*args("cpu", torch.float32), k, None, *_op_args(t, conv=False, o=o)).numpy()
    got = torch.ops.bimaco.binary_linear_fused(*args("cuda", dtype), k, None,
                                               *_op_args(t, conv=False, o=o, device="cuda", dtype=dtype))
    _close(got.float().cpu().numpy(), ref, rtol=1e-5 if dtype == torch.float32 else 2e-3)


@pytest.mark.cuda
@cuda
def test_cuda_fused_rejects_side_branches_on_a_strided_conv(cuda_ops):
    rng = np.random.default_rng(0)
    pw, bias = _packed(rng, 8, 8, 3)
    x = torch.randn(1, 8, 8, 8, device="cuda")
    t = _tables(rng, 8, 8, rprelu=True, smb=True, rank=0)
    with pytest.raises(RuntimeError, match="stride 1"):
        torch.ops.bimaco.binary_conv2d_fused(x, torch.from_numpy(pw.bits).cuda(), torch.from_numpy(pw.alpha).cuda(),
                                             torch.from_numpy(bias).cuda(), [2, 2], [1, 1, 1, 1], 8, None,
                                             *_op_args(t, conv=True, o=8, device="cuda"))
