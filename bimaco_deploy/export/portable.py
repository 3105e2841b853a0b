"""Standard-op expansion of the ``bimaco`` custom nodes.

The portable graph is the custom-node graph with every ``BinaryConv2d`` /
``BinaryLinear`` node replaced by standard ONNX (opset 17) ops that read the
SAME int32 initializers (sign bits, optional zero mask) plus alpha and bias:

* bits -> signs: opset 17 has no bitwise ops, so a word is widened to int64,
  made unsigned (+2^32 when negative), and bit i is ``(u // 2^i) mod 2``;
  set bit -> -1, clear -> +1, masked zero -> 0. All inputs are initializers,
  so ONNX Runtime folds this once at session start.
* activations: ``s = ReduceMean(|X|)`` over channels (conv: per pixel; linear:
  per row), ``xb = Sign(X) * s`` (Sign(0) = 0, as the contract says);
* ``Conv(xb, alpha * signs, bias)`` with the node's strides and pads: zero
  padding of ``xb`` gives s = 0 at padded taps, and the per-tap scale of the
  contract is exactly the Conv's sum over taps of ``s[q] * sgn(x[q]) * w``;
  linear: ``MatMul(xb, (alpha * signs)^T) + bias``.
A float16 X is computed in float32 inside the expansion (the contract's
reference does the same) and cast back.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ArtifactError
from ..plugins import contract
from .graph_builder import GraphBuilder


def _attrs(node: onnx.NodeProto) -> Dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def unpack_signs(gb: GraphBuilder, bits: str, channels: int, zero: Optional[str], name: str, lead_dims: int) -> str:
    """Emit ops turning int32 sign words [..., words] into float32 signs [..., channels].

    ``lead_dims`` is the number of axes before the word axis (3 for a conv's
    [O, KH, KW, words], 1 for a linear's [O, words]).
    """
    w64 = gb.op("Cast", [bits], to=TensorProto.INT64, name=f"{name}/bits_i64")
    neg_word = gb.op("Less", [w64, gb.i64(0)], name=f"{name}/word_neg")
    unsigned = gb.op("Where", [neg_word, gb.op("Add", [w64, gb.i64(1 << 32)], name=f"{name}/wrap"), w64], name=f"{name}/unsigned")

    def bit_planes(words: str, tag: str) -> str:
        expanded = gb.op("Unsqueeze", [words, gb.i64([-1])], name=f"{name}/{tag}_unsq")
        shifted = gb.op("Div", [expanded, gb.i64([1 << i for i in range(contract.WORD_BITS)])], name=f"{name}/{tag}_shift")
        bit = gb.op("Mod", [shifted, gb.i64(2)], name=f"{name}/{tag}_bit")
        # [..., words, 32] -> [..., words*32] (bit i of word j = channel 32j+i), then drop tail bits
        merged = gb.reshape(bit, [0] * lead_dims + [-1], name=f"{name}/{tag}_merge")
        sliced = gb.op("Slice", [merged, gb.i64([0]), gb.i64([channels]), gb.i64([-1])], name=f"{name}/{tag}_slice")
        return gb.op("Cast", [sliced], to=TensorProto.FLOAT, name=f"{name}/{tag}_f32")

    neg = bit_planes(unsigned, "sign")
    signs = gb.op("Sub", [gb.const(np.float32(1.0)), gb.op("Mul", [neg, gb.const(np.float32(2.0))], name=f"{name}/neg2")], name=f"{name}/signs")
    if zero is not None:
        z64 = gb.op("Cast", [zero], to=TensorProto.INT64, name=f"{name}/zero_i64")
        zneg = gb.op("Less", [z64, gb.i64(0)], name=f"{name}/zero_word_neg")
        zu = gb.op("Where", [zneg, gb.op("Add", [z64, gb.i64(1 << 32)], name=f"{name}/zwrap"), z64], name=f"{name}/zero_unsigned")
        is_zero = bit_planes(zu, "zero")
        keep = gb.op("Sub", [gb.const(np.float32(1.0)), is_zero], name=f"{name}/nonzero")
        signs = gb.op("Mul", [signs, keep], name=f"{name}/signs_masked")
    return signs


def _scale_and_sign(gb: GraphBuilder, x: str, axis: int, name: str) -> str:
    """xb = Sign(X) * mean(|X|) along ``axis`` (kept), all in float32."""
    s = gb.op("ReduceMean", [gb.op("Abs", [x], name=f"{name}/abs")], axes=[axis], keepdims=1, name=f"{name}/scale")
    return gb.op("Mul", [gb.op("Sign", [x], name=f"{name}/sign"), s], name=f"{name}/xb")


def expand_binary_conv2d(
    gb: GraphBuilder, inputs: Sequence[str], output: str, attrs: Dict[str, object], name: str, x_is_fp16: bool
) -> None:
    """Emit the standard-op form of one BinaryConv2d node writing ``output``."""
    x, bits, alpha, bias = inputs[:4]
    zero = inputs[4] if len(inputs) > 4 and inputs[4] else None
    c = int(attrs["in_channels"])  # type: ignore[arg-type]
    kernel = [int(k) for k in attrs["kernel_shape"]]  # type: ignore[union-attr]
    strides = [int(s) for s in attrs.get("strides", (1, 1))]  # type: ignore[union-attr]
    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]  # type: ignore[union-attr]
    xf = gb.op("Cast", [x], to=TensorProto.FLOAT, name=f"{name}/x_f32") if x_is_fp16 else x
    xb = _scale_and_sign(gb, xf, 1, name)
    signs = unpack_signs(gb, bits, c, zero, name, lead_dims=3)  # [O, KH, KW, C]
    w = gb.op("Transpose", [signs], perm=[0, 3, 1, 2], name=f"{name}/w_oihw")
    alpha4 = gb.reshape(alpha, [-1, 1, 1, 1], name=f"{name}/alpha4")
    w = gb.op("Mul", [w, alpha4], name=f"{name}/w_scaled")
    conv_out = output if not x_is_fp16 else gb.fresh(f"{name}/y_f32")
    gb.op("Conv", [xb, w, bias], outputs=[conv_out], kernel_shape=kernel, strides=strides, pads=pads, name=f"{name}/conv")
    if x_is_fp16:
        gb.op("Cast", [conv_out], outputs=[output], to=TensorProto.FLOAT16, name=f"{name}/y_f16")


def expand_binary_linear(
    gb: GraphBuilder, inputs: Sequence[str], output: str, attrs: Dict[str, object], name: str, x_is_fp16: bool
) -> None:
    """Emit the standard-op form of one BinaryLinear node writing ``output``."""
    x, bits, alpha, bias = inputs[:4]
    zero = inputs[4] if len(inputs) > 4 and inputs[4] else None
    k = int(attrs["in_features"])  # type: ignore[arg-type]
    xf = gb.op("Cast", [x], to=TensorProto.FLOAT, name=f"{name}/x_f32") if x_is_fp16 else x
    xb = _scale_and_sign(gb, xf, -1, name)
    signs = unpack_signs(gb, bits, k, zero, name, lead_dims=1)  # [O, K]
    w = gb.op("Mul", [signs, gb.reshape(alpha, [-1, 1], name=f"{name}/alpha2")], name=f"{name}/w_scaled")
    wt = gb.op("Transpose", [w], perm=[1, 0], name=f"{name}/w_t")
    mm = gb.op("MatMul", [xb, wt], name=f"{name}/matmul")
    lin_out = output if not x_is_fp16 else gb.fresh(f"{name}/y_f32")
    gb.op("Add", [mm, bias], outputs=[lin_out], name=f"{name}/bias")
    if x_is_fp16:
        gb.op("Cast", [lin_out], outputs=[output], to=TensorProto.FLOAT16, name=f"{name}/y_f16")


EXPANSIONS = {contract.CONV_OP: expand_binary_conv2d, contract.LINEAR_OP: expand_binary_linear}


def expand_node(gb: GraphBuilder, node: onnx.NodeProto, x_is_fp16: bool) -> None:
    """Emit the expansion of one custom node into ``gb`` (same input and output names)."""
    if node.domain != contract.DOMAIN or node.op_type not in EXPANSIONS:
        raise ArtifactError(f"node '{node.name}' ({node.domain}:{node.op_type}) is not a {contract.DOMAIN} op")
    EXPANSIONS[node.op_type](gb, list(node.input), node.output[0], _attrs(node), node.name, x_is_fp16)


def to_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every ``bimaco`` node expanded into standard ops.

    Initializers, inputs, outputs, every other node and the metadata are kept
    as they are; only the custom nodes change. The float dtype of a node's X
    is read from the graph's float type (metadata ``float_dtype``).
    """
    meta = {p.key: p.value for p in model.metadata_props}
    fp16 = meta.get("float_dtype", "float32") == "float16"
    gb = GraphBuilder(np.float16 if fp16 else np.float32)
    g = model.graph
    for n in g.node:
        gb.reserve(n.name)
        for o in n.output:
            gb.reserve(o)
    for t in g.initializer:
        gb.reserve(t.name)
    for i in g.input:
        gb.reserve(i.name)
    for node in g.node:
        if node.domain == contract.DOMAIN:
            expand_node(gb, node, fp16)
        else:
            gb.nodes.append(node)
    new_graph = helper.make_graph(
        gb.nodes,
        g.name + "_portable",
        list(g.input),
        list(g.output),
        initializer=list(g.initializer) + gb.initializers,
        value_info=list(g.value_info),
        doc_string=g.doc_string or None,
    )
    opsets = [o for o in model.opset_import if o.domain not in (contract.DOMAIN,)]
    out = helper.make_model(new_graph, opset_imports=opsets, producer_name=model.producer_name, ir_version=model.ir_version)
    meta["graph_form"] = "portable"
    helper.set_model_props(out, meta)
    return out


def has_custom_nodes(model: onnx.ModelProto) -> bool:
    return any(n.domain == contract.DOMAIN for n in model.graph.node)


__all__ = ["to_portable", "expand_node", "unpack_signs", "has_custom_nodes"]
