"""One binary layer as ONNX: the ``bimaco`` core node and its standard-op side branches.

Conv:   y = RPReLU(BinaryConv2d(x) + bias) ; y += shortcut(x) ; y += LRMB(x)
        RPReLU = Add(b0) -> PRelu(slope) -> Add(b1); shortcut = 2x2 AveragePool
        for strided same-width layers, else the compact SMB; LRMB = two 1x1 Conv.
Linear: y = (BinaryLinear(x) + bias + LRMB(x)) + SMB(x); LRMB = two MatMul.
The order of the additions is the original's (it changes float rounding).

The core is written either as the custom node (``portable=False``, for
TensorRT and our own kernels) or directly as its standard-op expansion
(``portable=True``), through the same code path as :func:`portable.to_portable`.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
from onnx import TensorProto

from ..plugins import contract
from .graph_builder import GraphBuilder
from .layer_params import BinaryConvLayer, BinaryLinearLayer, SparseRows
from .portable import expand_node

BinaryLayer = Union[BinaryConvLayer, BinaryLinearLayer]


def _core_inputs(gb: GraphBuilder, layer: BinaryLayer, x: str) -> list:
    pw = layer.packed
    ins = [
        x,
        gb.initializer(f"{layer.name}.wbits", pw.bits.astype(np.int32)),
        # alpha and bias stay float32 in every export (contract), also for float16 X
        gb.initializer(f"{layer.name}.alpha", pw.alpha.astype(np.float32)),
        gb.initializer(f"{layer.name}.bias", layer.bias.astype(np.float32)),
    ]
    if pw.zero is not None:
        ins.append(gb.initializer(f"{layer.name}.wzero", pw.zero.astype(np.int32)))
    return ins


def emit_core(gb: GraphBuilder, layer: BinaryLayer, x: str, *, portable: bool, x_rank: Optional[int] = None) -> str:
    """The 1-bit core (+ bias) of a layer: a ``bimaco`` node, or its expansion."""
    ins = _core_inputs(gb, layer, x)
    if isinstance(layer, BinaryConvLayer):
        attrs = dict(
            in_channels=layer.in_channels,
            kernel_shape=[layer.kernel, layer.kernel],
            strides=[layer.stride, layer.stride],
            pads=list(layer.pads),
        )
        op_type = contract.CONV_OP
        shape = [None, layer.out_channels, None, None]
    else:
        attrs = dict(in_features=layer.in_features)
        op_type = contract.LINEAR_OP
        # rank follows X ([N, K] or [B, L, K])
        shape = [None] * ((x_rank or 2) - 1) + [layer.out_features]
    attrs.update(plugin_version=contract.PLUGIN_VERSION, plugin_namespace=contract.PLUGIN_NAMESPACE)
    y = gb.op(op_type, ins, domain=contract.DOMAIN, name=f"{layer.name}/{op_type}", **attrs)
    node = gb.nodes[-1]
    if portable:
        gb.nodes.pop()
        expand_node(gb, node, x_is_fp16=gb.float_dtype == np.float16)
    else:
        gb.domains[contract.DOMAIN] = contract.DOMAIN_VERSION
        gb.annotate(y, gb.float_type, shape)
    return y


def pack_small_ints(values: np.ndarray, field_bits: int) -> np.ndarray:
    """Pack non-negative ints below 2^(field_bits-1) into int32 words, 32/field_bits per word.

    Keeps SMB column indices (16 bits) and row counts (8 bits) compact in int32,
    the only integer type the TensorRT parser keeps intact. The top field stays
    below half its range so every word is non-negative.
    """
    v = np.asarray(values, np.int64).reshape(-1)
    per = 32 // field_bits
    if v.size and (v.min() < 0 or v.max() >= (1 << (field_bits - 1))):
        raise ValueError(f"values must lie in [0, {1 << (field_bits - 1)}) to pack in {field_bits} bits")
    padded = np.zeros(((v.size + per - 1) // per) * per, np.int64)
    padded[: v.size] = v
    fields = padded.reshape(-1, per) << (field_bits * np.arange(per, dtype=np.int64))
    return fields.sum(axis=1).astype(np.int32)


def emit_unpack_small_ints(gb: GraphBuilder, words: str, count: int, field_bits: int, name: str) -> str:
    """Inverse of :func:`pack_small_ints` in standard ops: int32 words -> int64 [count]."""
    per = 32 // field_bits
    w64 = gb.op("Cast", [words], to=TensorProto.INT64, name=f"{name}/i64")
    unsq = gb.op("Unsqueeze", [w64, gb.i64([-1])], name=f"{name}/unsq")
    shifted = gb.op("Div", [unsq, gb.i64([1 << (field_bits * i) for i in range(per)])], name=f"{name}/shift")
    fields = gb.op("Mod", [shifted, gb.i64(1 << field_bits)], name=f"{name}/field")
    flat = gb.reshape(fields, [-1], name=f"{name}/flat")
    return gb.op("Slice", [flat, gb.i64([0]), gb.i64([count]), gb.i64([0])], name=f"{name}/slice")


def _smb_tables(gb: GraphBuilder, smb: SparseRows, name: str) -> tuple:
    """Emit the folded-at-load subgraph giving the padded (index [O*R], value [O, R]) tables.

    Stored: cols (16-bit fields), values (float), counts (8-bit fields). Row o
    uses positions start[o] + r for r < counts[o]; padding slots point at an
    appended (column 0, value 0) entry, so they add exactly 0.
    """
    o, r, nnz = smb.out_features, smb.row_width, smb.nnz
    col_bits = 16 if int(smb.cols.max(initial=0)) < (1 << 15) else 32
    cnt_bits = 8 if r < (1 << 7) else 32
    if col_bits == 32:
        cols = gb.op("Cast", [gb.initializer(f"{name}.smb_cols", smb.cols.astype(np.int32))], to=TensorProto.INT64)
    else:
        cols = emit_unpack_small_ints(gb, gb.initializer(f"{name}.smb_cols", pack_small_ints(smb.cols, 16)), nnz, 16, f"{name}/smb_cols")
    if cnt_bits == 32:
        counts = gb.op("Cast", [gb.initializer(f"{name}.smb_counts", smb.counts.astype(np.int32))], to=TensorProto.INT64)
    else:
        counts = emit_unpack_small_ints(gb, gb.initializer(f"{name}.smb_counts", pack_small_ints(smb.counts, 8)), o, 8, f"{name}/smb_counts")
    values = gb.weight(f"{name}.smb_values", smb.values)
    start = gb.op("CumSum", [counts, gb.i64(0)], exclusive=1, name=f"{name}/smb_start")
    slot = gb.i64(np.arange(r).reshape(1, r))
    valid = gb.op("Less", [slot, gb.op("Unsqueeze", [counts, gb.i64([1])], name=f"{name}/smb_cnt_col")], name=f"{name}/smb_valid")
    pos = gb.op("Add", [gb.op("Unsqueeze", [start, gb.i64([1])], name=f"{name}/smb_start_col"), slot], name=f"{name}/smb_pos_raw")
    pos = gb.op("Where", [valid, pos, gb.i64(nnz)], name=f"{name}/smb_pos")
    cols_ext = gb.op("Concat", [cols, gb.i64([0])], axis=0, name=f"{name}/smb_cols_ext")
    vals_ext = gb.op("Concat", [values, gb.fconst([0.0])], axis=0, name=f"{name}/smb_vals_ext")
    index = gb.reshape(gb.op("Gather", [cols_ext, pos], axis=0, name=f"{name}/smb_index_rows"), [-1], name=f"{name}/smb_index")
    value = gb.op("Gather", [vals_ext, pos], axis=0, name=f"{name}/smb_value")  # [O, R]
    return index, value


def emit_smb(gb: GraphBuilder, smb: SparseRows, x: str, name: str, *, conv: bool, x_rank: int = 4) -> str:
    """Compact sparse map: Gather the used inputs per output row, weight them, sum the row.

    Conv: X [N, C, H, W] -> Gather(axis 1) [N, O*R, H, W] -> [N, O, R, H, W] -> * v -> sum R.
    Linear: X [..., K] -> Gather(axis -1) [..., O*R] -> [..., O, R] -> * v -> sum R.
    """
    o, r = smb.out_features, smb.row_width
    idx, value = _smb_tables(gb, smb, name)
    if conv:
        gathered = gb.op("Gather", [x, idx], axis=1, name=f"{name}/smb_gather")
        target = gb.concat_i64([[0, o, r], gb.shape_of(x, start=2)])
        rows = gb.reshape(gathered, target, name=f"{name}/smb_rows")
        vals = gb.reshape(value, [o, r, 1, 1], name=f"{name}/smb_value4")
        prod = gb.op("Mul", [rows, vals], name=f"{name}/smb_mul")
        return gb.op("ReduceSum", [prod, gb.i64([2])], keepdims=0, name=f"{name}/smb_sum")
    gathered = gb.op("Gather", [x, idx], axis=-1, name=f"{name}/smb_gather")
    rows = gb.reshape(gathered, [0] * (x_rank - 1) + [o, r], name=f"{name}/smb_rows")
    prod = gb.op("Mul", [rows, value], name=f"{name}/smb_mul")
    return gb.op("ReduceSum", [prod, gb.i64([-1])], keepdims=0, name=f"{name}/smb_sum")


def emit_binary_conv(gb: GraphBuilder, layer: BinaryConvLayer, x: str, *, portable: bool) -> str:
    """The whole binary conv layer, from its raw input ``x`` [N, C, H, W]."""
    n = layer.name
    y = emit_core(gb, layer, x, portable=portable)
    b0, slope, b1 = layer.rprelu
    y = gb.op("Add", [y, gb.weight(f"{n}.rprelu_b0", b0.reshape(-1, 1, 1))], name=f"{n}/rprelu_b0")
    y = gb.op("PRelu", [y, gb.weight(f"{n}.rprelu_slope", slope.reshape(-1, 1, 1))], name=f"{n}/rprelu")
    y = gb.op("Add", [y, gb.weight(f"{n}.rprelu_b1", b1.reshape(-1, 1, 1))], name=f"{n}/rprelu_b1")
    if layer.avgpool_shortcut:
        pooled = gb.op(
            "AveragePool", [x], kernel_shape=[layer.stride] * 2, strides=[layer.stride] * 2, name=f"{n}/avgpool_shortcut"
        )
        y = gb.op("Add", [y, pooled], name=f"{n}/add_shortcut")
    elif layer.smb is not None:
        y = gb.op("Add", [y, emit_smb(gb, layer.smb, x, n, conv=True)], name=f"{n}/add_smb")
    if layer.lrmb is not None:
        a, b = layer.lrmb
        down = gb.op("Conv", [x, gb.weight(f"{n}.lrmb_down", a)], kernel_shape=[1, 1], name=f"{n}/lrmb_down")
        up = gb.op("Conv", [down, gb.weight(f"{n}.lrmb_up", b)], kernel_shape=[1, 1], name=f"{n}/lrmb_up")
        y = gb.op("Add", [y, up], name=f"{n}/add_lrmb")
    return y


def emit_binary_linear(gb: GraphBuilder, layer: BinaryLinearLayer, x: str, *, portable: bool, x_rank: int) -> str:
    """The whole binary linear layer, from its input ``x`` [..., K] of rank ``x_rank``."""
    n = layer.name
    y = emit_core(gb, layer, x, portable=portable, x_rank=x_rank)
    if layer.lrmb is not None:
        down, up = layer.lrmb
        h = gb.op("MatMul", [x, gb.weight(f"{n}.lrmb_down_t", down.T)], name=f"{n}/lrmb_down")
        h = gb.op("MatMul", [h, gb.weight(f"{n}.lrmb_up_t", up.T)], name=f"{n}/lrmb_up")
        y = gb.op("Add", [y, h], name=f"{n}/add_lrmb")
    if layer.smb is not None:
        y = gb.op("Add", [y, emit_smb(gb, layer.smb, x, n, conv=False, x_rank=x_rank)], name=f"{n}/add_smb")
    return y


def emit_binary_layer(gb: GraphBuilder, layer: BinaryLayer, x: str, *, portable: bool, x_rank: Optional[int] = None) -> str:
    """Dispatch on the layer kind."""
    if isinstance(layer, BinaryConvLayer):
        return emit_binary_conv(gb, layer, x, portable=portable)
    return emit_binary_linear(gb, layer, x, portable=portable, x_rank=x_rank or 2)


def single_layer_model(layer: BinaryLayer, *, portable: bool, x_rank: Optional[int] = None, float_dtype=np.float32):
    """A one-layer ONNX model (input ``X``, output ``Y``) for teacher-forced checks."""
    gb = GraphBuilder(float_dtype)
    ft = gb.float_type
    if isinstance(layer, BinaryConvLayer):
        x = gb.add_input("X", ft, ["N", layer.in_channels, "H", "W"])
        rank = 4
    else:
        rank = x_rank or 2
        x = gb.add_input("X", ft, [f"d{i}" for i in range(rank - 1)] + [layer.in_features])
    y = emit_binary_layer(gb, layer, x, portable=portable, x_rank=rank)
    y = gb.op("Identity", [y], outputs=["Y"], name="output")
    if isinstance(layer, BinaryConvLayer):
        gb.add_output("Y", ft, ["N", layer.out_channels, None, None])
    else:
        gb.add_output("Y", ft, [f"d{i}" for i in range(rank - 1)] + [layer.out_features])
    meta = {"float_dtype": str(np.dtype(float_dtype)), "graph_form": "portable" if portable else "custom", "layer": layer.name}
    return gb.make_model(f"layer_{layer.name}", metadata=meta)


__all__ = [
    "emit_core",
    "emit_smb",
    "emit_binary_conv",
    "emit_binary_linear",
    "emit_binary_layer",
    "single_layer_model",
    "TensorProto",
]
