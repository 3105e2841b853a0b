"""Single binary layers: the bimaco node's portable expansion in ONNX Runtime vs the contract.

Random shapes include odd channel counts (tail bits), stride 2, exact zeros in X
and in W (scattered zeros need the Wzero mask; all-zero channels need alpha = 0).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bimaco_deploy.export.graph_builder import GraphBuilder
from bimaco_deploy.export.layer_params import BinaryConvLayer, BinaryLinearLayer, SparseRows
from bimaco_deploy.export.onnx_nodes import emit_core, single_layer_model
from bimaco_deploy.export.portable import has_custom_nodes, to_portable
from bimaco_deploy.plugins import contract


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _random_smb(rng: np.random.Generator, out_f: int, in_f: int) -> SparseRows:
    nnz = 2 * max(in_f, out_f)
    rows = rng.integers(0, out_f, nnz)
    cols = rng.integers(0, in_f, nnz)  # duplicates allowed: they must be summed
    vals = rng.standard_normal(nnz).astype(np.float32)
    # EMA-drifted float indices, rounded to nearest by the reader
    idx = np.stack([rows, cols]).astype(np.float32) + rng.uniform(-0.002, 0.002, (2, nnz)).astype(np.float32)
    return SparseRows.from_coo(vals, idx, out_f, in_f, "test")


def _conv_layer(rng, c, o, k, stride, *, zeros: str = "none", smb=True, lrmb=True) -> BinaryConvLayer:
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    if zeros in ("scattered", "both"):
        w[rng.random(w.shape) < 0.1] = 0.0
    if zeros in ("channel", "both"):
        w[0] = 0.0
    avg = stride > 1 and c == o
    r = 3
    return BinaryConvLayer(
        name="L", in_channels=c, out_channels=o, kernel=k, stride=stride, padding=k // 2,
        packed=contract.pack_weight(w), bias=rng.standard_normal(o).astype(np.float32),
        rprelu=(rng.standard_normal(o).astype(np.float32) * 0.1, rng.uniform(0, 0.5, o).astype(np.float32),
                rng.standard_normal(o).astype(np.float32) * 0.1),
        avgpool_shortcut=avg, smb=None if (avg or not smb) else _random_smb(rng, o, c),
        lrmb=None if (avg or not lrmb) else (rng.standard_normal((r, c, 1, 1)).astype(np.float32),
                                            rng.standard_normal((o, r, 1, 1)).astype(np.float32)),
        latent_weight_count=w.size,
    )


def _linear_layer(rng, k, o, *, zeros: str = "none") -> BinaryLinearLayer:
    w = rng.standard_normal((o, k)).astype(np.float32)
    if zeros in ("scattered", "both"):
        w[rng.random(w.shape) < 0.1] = 0.0
    if zeros in ("channel", "both"):
        w[-1] = 0.0
    r = 2
    return BinaryLinearLayer(
        name="L", in_features=k, out_features=o, packed=contract.pack_weight(w),
        bias=rng.standard_normal(o).astype(np.float32), smb=_random_smb(rng, o, k),
        lrmb=(rng.standard_normal((r, k)).astype(np.float32), rng.standard_normal((o, r)).astype(np.float32)),
        latent_weight_count=w.size,
    )


def _core_model(layer, rank: int) -> onnx.ModelProto:
    """Only the core node (no side branches), custom form; portable form comes from to_portable."""
    gb = GraphBuilder()
    if isinstance(layer, BinaryConvLayer):
        x = gb.add_input("X", onnx.TensorProto.FLOAT, ["N", layer.in_channels, "H", "W"])
    else:
        x = gb.add_input("X", onnx.TensorProto.FLOAT, [f"d{i}" for i in range(rank - 1)] + [layer.in_features])
    y = emit_core(gb, layer, x, portable=False, x_rank=rank)
    gb.op("Identity", [y], outputs=["Y"])
    gb.add_output("Y", onnx.TensorProto.FLOAT, [None] * rank)
    return gb.make_model("core", metadata={"float_dtype": "float32"})


def _x_with_zeros(rng, shape) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.05] = 0.0
    return x


def _conv_layer_reference(layer: BinaryConvLayer, x: np.ndarray) -> np.ndarray:
    pw = layer.packed
    y = contract.binary_conv2d_reference(
        x, pw.bits, pw.alpha, layer.bias, in_channels=layer.in_channels, kernel_shape=(layer.kernel,) * 2,
        strides=(layer.stride,) * 2, pads=layer.pads, wzero=pw.zero,
    ).astype(np.float64)
    b0, slope, b1 = (v.astype(np.float64)[None, :, None, None] for v in layer.rprelu)
    z = y + b0
    y = np.maximum(z, 0) + slope * np.minimum(z, 0) + b1
    xd = x.astype(np.float64)
    if layer.avgpool_shortcut:
        n, c, h, w = x.shape
        s = layer.stride
        y = y + xd.reshape(n, c, h // s, s, w // s, s).mean(axis=(3, 5))
    elif layer.smb is not None:
        y = y + np.einsum("oc,nchw->nohw", layer.smb.dense(layer.in_channels), xd)
    if layer.lrmb is not None:
        a, b = layer.lrmb
        y = y + np.einsum("or,rc,nchw->nohw", b[:, :, 0, 0].astype(np.float64), a[:, :, 0, 0].astype(np.float64), xd)
    return y


def _linear_layer_reference(layer: BinaryLinearLayer, x: np.ndarray) -> np.ndarray:
    pw = layer.packed
    y = contract.binary_linear_reference(x, pw.bits, pw.alpha, layer.bias, in_features=layer.in_features, wzero=pw.zero)
    xd = x.astype(np.float64)
    down, up = layer.lrmb
    y = y.astype(np.float64) + xd @ down.T.astype(np.float64) @ up.T.astype(np.float64)
    return y + xd @ layer.smb.dense(layer.in_features).T


CONV_CASES = [
    # (C, O, k, stride, H, W, zeros)
    (32, 32, 3, 1, 8, 8, "none"),
    (37, 19, 3, 1, 7, 9, "scattered"),  # odd channels: tail bits in the last word
    (70, 70, 3, 2, 10, 6, "both"),  # strided same-width: avg-pool shortcut, no SMB/LRMB
    (5, 64, 1, 1, 4, 5, "channel"),  # 1x1, fewer than 32 channels
    (33, 33, 3, 2, 9, 11, "none"),  # strided, odd channels and odd spatial size
]


@pytest.mark.parametrize("c,o,k,stride,h,w,zeros", CONV_CASES)
def test_conv_core_expansion_matches_contract(c, o, k, stride, h, w, zeros):
    rng = np.random.default_rng(hash((c, o, k, stride, h, w)) % 2**32)
    layer = _conv_layer(rng, c, o, k, stride, zeros=zeros)
    custom = _core_model(layer, 4)
    portable = to_portable(custom)
    assert has_custom_nodes(custom) and not has_custom_nodes(portable)
    x = _x_with_zeros(rng, (2, c, h, w))
    got = _session(portable).run(None, {"X": x})[0]
    pw = layer.packed
    want = contract.binary_conv2d_reference(
        x, pw.bits, pw.alpha, layer.bias, in_channels=c, kernel_shape=(k, k), strides=(stride, stride),
        pads=layer.pads, wzero=pw.zero,
    )
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("c,o,k,stride,h,w,zeros", CONV_CASES)
def test_conv_layer_with_side_branches_matches_numpy(c, o, k, stride, h, w, zeros):
    rng = np.random.default_rng(1 + hash((c, o, k, stride)) % 2**32)
    layer = _conv_layer(rng, c, o, k, stride, zeros=zeros)
    x = _x_with_zeros(rng, (1, c, h - h % stride, w - w % stride))
    got = _session(single_layer_model(layer, portable=True)).run(None, {"X": x})[0]
    want = _conv_layer_reference(layer, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("k,o,shape,zeros", [(32, 64, (3,), "none"), (45, 7, (2, 5), "scattered"), (128, 96, (4, 16), "both")])
def test_linear_layer_matches_numpy(k, o, shape, zeros):
    rng = np.random.default_rng(k * 1000 + o)
    layer = _linear_layer(rng, k, o, zeros=zeros)
    x = _x_with_zeros(rng, shape + (k,))
    model = single_layer_model(layer, portable=True, x_rank=x.ndim)
    got = _session(model).run(None, {"X": x})[0]
    want = _linear_layer_reference(layer, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    core = to_portable(_core_model(layer, x.ndim))
    got_core = _session(core).run(None, {"X": x})[0]
    pw = layer.packed
    want_core = contract.binary_linear_reference(x, pw.bits, pw.alpha, layer.bias, in_features=k, wzero=pw.zero)
    np.testing.assert_allclose(got_core, want_core, rtol=1e-5, atol=1e-5 * np.abs(want_core).max())


def test_strided_width_change_is_refused():
    from bimaco_deploy.errors import CheckpointError
    from bimaco_deploy.export.layer_params import StateReader, read_binary_conv

    reader = StateReader({"L.weight": np.ones((8, 4, 3, 3), np.float32)}, "ckpt.pth")
    with pytest.raises(CheckpointError, match="strided binary conv must keep its width"):
        read_binary_conv(reader, "L", 4, 8, 3, 2, 1)


def test_scattered_zero_weights_need_and_get_the_mask():
    rng = np.random.default_rng(3)
    layer = _conv_layer(rng, 40, 8, 3, 1, zeros="scattered")
    assert layer.packed.zero is not None and layer.packed.num_zero_weights > 0
    node = next(n for n in _core_model(layer, 4).graph.node if n.domain == contract.DOMAIN)
    assert len(node.input) == 5  # X, Wbits, alpha, bias, Wzero
    # without the mask the zeros would binarize to +1: the result must change
    x = rng.standard_normal((1, 40, 5, 5)).astype(np.float32)
    pw = layer.packed
    kw = dict(in_channels=40, kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    with_mask = contract.binary_conv2d_reference(x, pw.bits, pw.alpha, layer.bias, wzero=pw.zero, **kw)
    without = contract.binary_conv2d_reference(x, pw.bits, pw.alpha, layer.bias, **kw)
    assert np.abs(with_mask - without).max() > 1e-3
    got = _session(to_portable(_core_model(layer, 4))).run(None, {"X": x})[0]
    np.testing.assert_allclose(got, with_mask, rtol=1e-5, atol=1e-5 * np.abs(with_mask).max())


def test_custom_node_follows_the_contract_for_tensorrt():
    rng = np.random.default_rng(4)
    layer = _conv_layer(rng, 33, 16, 3, 2)
    model = _core_model(layer, 4)
    node = next(n for n in model.graph.node if n.domain == contract.DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == contract.CONV_OP
    assert attrs["plugin_version"] == contract.PLUGIN_VERSION.encode()
    assert attrs["plugin_namespace"] == contract.PLUGIN_NAMESPACE.encode()
    assert attrs["in_channels"] == 33 and list(attrs["kernel_shape"]) == [3, 3] and list(attrs["strides"]) == [2, 2]
    inits = {t.name: t for t in model.graph.initializer}
    bits = inits[node.input[1]]
    assert bits.data_type == onnx.TensorProto.INT32 and list(bits.dims) == [16, 3, 3, 2]
    assert inits[node.input[2]].data_type == onnx.TensorProto.FLOAT  # alpha
    assert {o.domain: o.version for o in model.opset_import}[contract.DOMAIN] == contract.DOMAIN_VERSION
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("count", [0, 1, 2, 7, 1000])
def test_16_bit_tables_pack_two_per_word(count):
    rng = np.random.default_rng(count)
    cols = rng.integers(0, contract.SMB_MAX_CHANNELS, count)
    if count:
        cols[0] = contract.SMB_MAX_CHANNELS - 1  # the widest index keeps the word non-negative
    words = contract.pack_halves(cols)
    assert words.dtype == np.int32 and words.size == (count + 1) // 2 and (words >= 0).all()
    np.testing.assert_array_equal(contract.unpack_halves(words, count), cols)
    # byte for byte the int16 column table of the CPU kernels (little-endian)
    np.testing.assert_array_equal(words.view("<i2")[:count], cols.astype(np.int16))
    with pytest.raises(ValueError):
        contract.pack_halves([contract.SMB_MAX_CHANNELS])


def test_smb_table_decode_matches_the_rows():
    """The shared table's int32 decode (ONNX Runtime) gives every layer its padded rows."""
    from bimaco_deploy.export.layer_params import SparseRows
    from bimaco_deploy.export.smb_table import smb_table_for

    rng = np.random.default_rng(3)
    layers = []
    for o, c in ((5, 40), (9, 1300), (3, 7)):
        counts = rng.integers(0, 6, o)
        counts[0] = 0  # an empty row
        nnz = int(counts.sum())
        layers.append(SparseRows(cols=rng.integers(0, c, nnz), values=rng.standard_normal(nnz).astype(np.float32),
                                 counts=counts.astype(np.int64)))
    gb = GraphBuilder()
    outs = []
    for i, smb in enumerate(layers):
        idx, val = smb_table_for(gb).add(smb, f"l{i}")
        outs += [gb.op("Identity", [idx], outputs=[f"idx{i}"]), gb.op("Identity", [val], outputs=[f"val{i}"])]
        gb.add_output(f"idx{i}", onnx.TensorProto.INT32, None)
        gb.add_output(f"val{i}", onnx.TensorProto.FLOAT, None)
    got = _session(gb.make_model("t")).run(None, {})
    for i, smb in enumerate(layers):
        index, value = smb.padded()
        np.testing.assert_array_equal(got[2 * i], index.reshape(-1))
        np.testing.assert_array_equal(got[2 * i + 1], value)


@pytest.mark.parametrize("fuse,prefix", [(False, "smb_table."), (True, "L.smb_")], ids=["shared-table", "fused-csr"])
def test_smb_stays_compact_never_dense(fuse, prefix):
    rng = np.random.default_rng(5)
    layer = _conv_layer(rng, 640, 640, 3, 1)
    model = single_layer_model(layer, portable=False, fuse=fuse)
    smb_bytes = sum(len(t.raw_data) for t in model.graph.initializer if t.name.startswith(prefix))
    assert smb_bytes > 4 * layer.smb.nnz  # the values alone
    dense_bytes = 640 * 640 * 4
    # values (4 B) + 16-bit columns + a 4-byte row start per output row: far below a dense matrix
    assert smb_bytes <= 4 * layer.smb.nnz + 2 * (layer.smb.nnz + 2) + 4 * (640 + 1)
    assert smb_bytes < dense_bytes / 50


# --------------------------------------------------------------------------- fused side branches


def _node_side(model: onnx.ModelProto) -> dict:
    """The fused node's side inputs as arrays, by contract name."""
    node = next(n for n in model.graph.node if n.domain == contract.DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    layout = contract.OPS[node.op_type].layout(attrs, len(node.input))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {name: inits[node.input[i]] for name, i in layout.items() if name != "X"}


@pytest.mark.parametrize("c,o,k,stride,h,w,zeros", CONV_CASES)
def test_fused_conv_node_is_the_standard_layer(c, o, k, stride, h, w, zeros):
    """One fused node = the layer: its portable expansion equals the unfused portable graph bit
    for bit, the contract's numpy reference on the node's own tables equals the independent
    layer reference, and the node holds exactly the side inputs its attributes announce."""
    rng = np.random.default_rng(7 + hash((c, o, k, stride)) % 2**32)
    layer = _conv_layer(rng, c, o, k, stride, zeros=zeros)
    x = _x_with_zeros(rng, (2, c, h - h % stride, w - w % stride))
    fused = single_layer_model(layer, portable=False, fuse=True)
    onnx.checker.check_model(fused, full_check=True)
    node = next(n for n in fused.graph.node if n.domain == contract.DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["rprelu"] == 1
    assert attrs.get("smb", 0) == (0 if layer.avgpool_shortcut else 1)
    assert attrs.get("lrmb_rank", 0) == (0 if layer.avgpool_shortcut else 3)
    got = _session(to_portable(fused)).run(None, {"X": x})[0]
    standard = _session(single_layer_model(layer, portable=True)).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, standard)
    want = _conv_layer_reference(layer, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the contract's reference of the fused maths, fed with the node's own tables
    side = _node_side(fused)
    pw = layer.packed
    core = contract.binary_conv2d_reference(x, pw.bits, pw.alpha, layer.bias, in_channels=c, kernel_shape=(k, k),
                                            strides=(stride, stride), pads=layer.pads, wzero=pw.zero)
    ref = contract.side_branches_reference(
        x, core, conv=True, rprelu=side.get("rprelu"), smb_rowptr=side.get("smb_rowptr"),
        smb_col=side.get("smb_col"), smb_val=side.get("smb_val"), lr_down=side.get("lr_down"),
        lr_up=side.get("lr_up"))
    if layer.avgpool_shortcut:
        n_, c_, h_, w_ = x.shape
        ref = ref + x.reshape(n_, c_, h_ // stride, stride, w_ // stride, stride).mean(axis=(3, 5))
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape", [(3,), (2, 5)])
def test_fused_linear_node_is_the_standard_layer(shape):
    rng = np.random.default_rng(len(shape))
    layer = _linear_layer(rng, 45, 19, zeros="scattered")
    x = _x_with_zeros(rng, shape + (45,))
    fused = single_layer_model(layer, portable=False, x_rank=x.ndim, fuse=True)
    got = _session(to_portable(fused)).run(None, {"X": x})[0]
    standard = _session(single_layer_model(layer, portable=True, x_rank=x.ndim)).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, standard)
    want = _linear_layer_reference(layer, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    side = _node_side(fused)
    assert set(side) == {"Wbits", "alpha", "bias", "Wzero", "smb_rowptr", "smb_col", "smb_val", "lr_down", "lr_up"}
    pw = layer.packed
    core = contract.binary_linear_reference(x, pw.bits, pw.alpha, layer.bias, in_features=45, wzero=pw.zero)
    tables = {k: side[k] for k in ("smb_rowptr", "smb_col", "smb_val", "lr_down", "lr_up")}
    ref = contract.side_branches_reference(x, core, conv=False, **tables)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_fused_fp16_node_keeps_x_dtype_tables():
    rng = np.random.default_rng(11)
    layer = _conv_layer(rng, 40, 24, 3, 1)
    fused = single_layer_model(layer, portable=False, float_dtype=np.float16, fuse=True)
    side = _node_side(fused)
    assert side["alpha"].dtype == np.float32 and side["bias"].dtype == np.float32  # the core's stay float32
    for name in ("rprelu", "smb_val", "lr_down", "lr_up"):
        assert side[name].dtype == np.float16, name
    assert side["smb_rowptr"].dtype == np.int32 and side["smb_col"].dtype == np.int32
    x = rng.standard_normal((1, 40, 6, 6)).astype(np.float16)
    got = _session(to_portable(fused)).run(None, {"X": x})[0]
    standard = _session(single_layer_model(layer, portable=True, float_dtype=np.float16)).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, standard)


def test_fused_node_expansion_needs_the_initializers():
    from bimaco_deploy.errors import ArtifactError
    from bimaco_deploy.export.portable import expand_node

    rng = np.random.default_rng(12)
    fused = single_layer_model(_conv_layer(rng, 8, 8, 3, 1), portable=False, fuse=True)
    node = next(n for n in fused.graph.node if n.domain == contract.DOMAIN)
    with pytest.raises(ArtifactError, match="needs the graph's initializers"):
        expand_node(GraphBuilder(), node, False)
