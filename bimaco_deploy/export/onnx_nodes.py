"""One binary layer as ONNX: the ``bimaco`` core node and its side branches.

Conv:   y = RPReLU(BinaryConv2d(x) + bias) ; y += shortcut(x) ; y += LRMB(x)
        RPReLU = Add(b0) -> PRelu(slope) -> Add(b1); shortcut = 2x2 AveragePool
        for strided same-width layers, else the compact SMB; LRMB = two 1x1 Conv.
Linear: y = (BinaryLinear(x) + bias + LRMB(x)) + SMB(x); LRMB = two MatMul.
The order of the additions is the original's (it changes float rounding).

The side branches are written either as standard ops (above), or fused into the
custom node (``fuse=True``: attributes ``rprelu`` / ``smb`` / ``lrmb_rank`` and their
inputs, see :mod:`bimaco_deploy.plugins.contract`), which the plugin applies in its GEMM
epilogue: no [N, O*R, H, W] SMB gather and no separate layers per branch. Only the
average-pool shortcut stays outside the node.

The core is written either as the custom node (``portable=False``, for
TensorRT and our own kernels) or directly as its standard-op expansion
(``portable=True``), through the same code path as :func:`portable.to_portable`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..plugins import contract
from .graph_builder import GraphBuilder
from .layer_params import BinaryConvLayer, BinaryLinearLayer, SparseRows
from .portable import expand_node
from .smb_table import emit_smb_rows, smb_table_for

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


def fused_side_inputs(gb: GraphBuilder, layer: BinaryLayer) -> Tuple[Dict[str, int], List[str]]:
    """(attributes, inputs) of the side branches a fused node carries (contract order).

    Float tables in the graph's dtype (the contract: side parameters follow X), SMB as its
    CSR (16-bit row starts and columns, two per int32 word, and values), LRMB as its two
    factors. A strided
    conv keeps only RPReLU: its shortcut is the average pool outside the node.
    """
    n = layer.name
    attrs: Dict[str, int] = {}
    ins: List[str] = []
    conv = isinstance(layer, BinaryConvLayer)
    if conv:
        attrs["rprelu"] = 1
        ins.append(gb.weight(f"{n}.rprelu_params", np.stack([np.asarray(v, np.float32) for v in layer.rprelu])))
    reads_input = not (conv and layer.avgpool_shortcut)
    smb = layer.smb if reads_input else None
    if smb is not None and smb.nnz > 0:
        attrs["smb"] = 1
        rowptr, cols = contract.smb_csr(smb.counts, smb.cols)
        ins += [
            gb.initializer(f"{n}.smb_rowptr", rowptr),
            gb.initializer(f"{n}.smb_col", cols),
            gb.weight(f"{n}.smb_val", smb.values),
        ]
    if layer.lrmb is not None and reads_input:
        down, up = layer.lrmb
        down = np.asarray(down, np.float32).reshape(down.shape[0], -1)  # conv [r, C, 1, 1] -> [r, C]
        up = np.asarray(up, np.float32).reshape(up.shape[0], -1)  # conv [O, r, 1, 1] -> [O, r]
        if down.shape[0] > contract.MAX_LRMB_RANK:
            raise ValueError(f"{n}: LRMB rank {down.shape[0]} exceeds the kernels' {contract.MAX_LRMB_RANK}")
        attrs["lrmb_rank"] = int(down.shape[0])
        ins += [gb.weight(f"{n}.lrmb_down", down), gb.weight(f"{n}.lrmb_up", up)]
    return attrs, ins


def emit_core(gb: GraphBuilder, layer: BinaryLayer, x: str, *, portable: bool, x_rank: Optional[int] = None,
              fused: bool = False) -> str:
    """The 1-bit core (+ bias) of a layer: a ``bimaco`` node, or its expansion.

    ``fused``: the node also carries the layer's side branches (custom form only).
    """
    if fused and portable:
        raise ValueError("the fused form is a custom node; the portable graph writes side branches as standard ops")
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
    if fused:
        side_attrs, side_ins = fused_side_inputs(gb, layer)
        attrs.update(side_attrs)
        ins += side_ins
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


def emit_smb(gb: GraphBuilder, smb: SparseRows, x: str, name: str, *, conv: bool, x_rank: int = 4) -> str:
    """Compact sparse map: Gather the used inputs per output row, weight them, sum the row.

    Conv: X [N, C, H, W] -> Gather(axis 1) [N, O*R, H, W] -> [N, O, R, H, W] -> * v -> sum R.
    Linear: X [..., K] -> Gather(axis -1) [..., O*R] -> [..., O, R] -> * v -> sum R.
    (The fused form, :func:`emit_binary_conv` with ``fuse``, never builds the O*R-wide tensor.)
    """
    idx, value = smb_table_for(gb).add(smb, name)
    return emit_smb_rows(gb, x, idx, value, smb.out_features, smb.row_width, name, conv=conv, x_rank=x_rank)


def emit_binary_conv(gb: GraphBuilder, layer: BinaryConvLayer, x: str, *, portable: bool, fuse: bool = False) -> str:
    """The whole binary conv layer, from its raw input ``x`` [N, C, H, W].

    ``fuse`` (custom form only): RPReLU, SMB and LRMB inside the node.
    """
    n = layer.name
    if fuse and not portable:
        y = emit_core(gb, layer, x, portable=False, fused=True)
        if layer.avgpool_shortcut:
            pooled = gb.op(
                "AveragePool", [x], kernel_shape=[layer.stride] * 2, strides=[layer.stride] * 2,
                name=f"{n}/avgpool_shortcut",
            )
            y = gb.op("Add", [y, pooled], name=f"{n}/add_shortcut")
        return y
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


def emit_binary_linear(gb: GraphBuilder, layer: BinaryLinearLayer, x: str, *, portable: bool, x_rank: int,
                       fuse: bool = False) -> str:
    """The whole binary linear layer, from its input ``x`` [..., K] of rank ``x_rank``."""
    n = layer.name
    if fuse and not portable:
        return emit_core(gb, layer, x, portable=False, x_rank=x_rank, fused=True)
    y = emit_core(gb, layer, x, portable=portable, x_rank=x_rank)
    if layer.lrmb is not None:
        down, up = layer.lrmb
        h = gb.op("MatMul", [x, gb.weight(f"{n}.lrmb_down_t", down.T)], name=f"{n}/lrmb_down")
        h = gb.op("MatMul", [h, gb.weight(f"{n}.lrmb_up_t", up.T)], name=f"{n}/lrmb_up")
        y = gb.op("Add", [y, h], name=f"{n}/add_lrmb")
    if layer.smb is not None:
        y = gb.op("Add", [y, emit_smb(gb, layer.smb, x, n, conv=False, x_rank=x_rank)], name=f"{n}/add_smb")
    return y


def emit_binary_layer(gb: GraphBuilder, layer: BinaryLayer, x: str, *, portable: bool, x_rank: Optional[int] = None,
                      fuse: bool = False) -> str:
    """Dispatch on the layer kind."""
    if isinstance(layer, BinaryConvLayer):
        return emit_binary_conv(gb, layer, x, portable=portable, fuse=fuse)
    return emit_binary_linear(gb, layer, x, portable=portable, x_rank=x_rank or 2, fuse=fuse)


def single_layer_model(layer: BinaryLayer, *, portable: bool, x_rank: Optional[int] = None, float_dtype=np.float32,
                       fuse: bool = True):
    """A one-layer ONNX model (input ``X``, output ``Y``) for teacher-forced checks.

    ``fuse`` applies to the custom form (``portable=False``), whose default is what
    ``export`` writes into ``unet.onnx``: the side branches inside the node.
    """
    gb = GraphBuilder(float_dtype)
    ft = gb.float_type
    if isinstance(layer, BinaryConvLayer):
        x = gb.add_input("X", ft, ["N", layer.in_channels, "H", "W"])
        rank = 4
    else:
        rank = x_rank or 2
        x = gb.add_input("X", ft, [f"d{i}" for i in range(rank - 1)] + [layer.in_features])
    y = emit_binary_layer(gb, layer, x, portable=portable, x_rank=rank, fuse=fuse and not portable)
    y = gb.op("Identity", [y], outputs=["Y"], name="output")
    if isinstance(layer, BinaryConvLayer):
        gb.add_output("Y", ft, ["N", layer.out_channels, None, None])
    else:
        gb.add_output("Y", ft, [f"d{i}" for i in range(rank - 1)] + [layer.out_features])
    meta = {"float_dtype": str(np.dtype(float_dtype)), "graph_form": "portable" if portable else "custom", "layer": layer.name,
            "side_branches": "fused" if fuse and not portable else "standard"}
    return gb.make_model(f"layer_{layer.name}", metadata=meta)


__all__ = [
    "emit_core",
    "fused_side_inputs",
    "emit_smb",
    "emit_binary_conv",
    "emit_binary_linear",
    "emit_binary_layer",
    "single_layer_model",
]
