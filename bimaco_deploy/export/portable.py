"""Standard-op expansion of the ``bimaco`` custom nodes.

The portable graph is the custom-node graph with every ``BinaryConv2d`` /
``BinaryLinear`` node replaced by standard ONNX (opset 17) ops that read the
SAME int32 initializers (sign bits, optional zero mask) plus alpha and bias:

* bits -> weights: opset 17 has no bitwise ops, so bit i < 31 of a word is
  ``(low31 // 2^i) mod 2`` in int32 (low31 = the word with bit 31 cleared by
  adding 2^31 to negative words) and bit 31 is the word's sign; a set bit gives
  -alpha, a clear one +alpha, a masked zero 0 (Where on bool masks). All inputs
  are initializers, so ONNX Runtime folds this once at session start.
* activations: ``s = ReduceMean(|X|)`` over channels (conv: per pixel; linear:
  per row), ``xb = Sign(X) * s`` (Sign(0) = 0, as the contract says);
* ``Conv(xb, alpha * signs, bias)`` with the node's strides and pads: zero
  padding of ``xb`` gives s = 0 at padded taps, and the per-tap scale of the
  contract is exactly the Conv's sum over taps of ``s[q] * sgn(x[q]) * w``;
  linear: ``MatMul(xb, (alpha * signs)^T) + bias``.
A float16 X is computed in float32 inside the expansion (the contract's
reference does the same) and cast back.

A node with fused side branches (``rprelu`` / ``smb`` / ``lrmb_rank``) expands into its
core as above plus the standard ops the exporter writes for an unfused layer (Add/PRelu/
Add, the padded-row SMB Gather, two 1x1 Convs or MatMuls), reading the node's own side
inputs; its SMB rows are decoded by the same int32 subgraph as the shared table.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ArtifactError
from ..plugins import contract
from .graph_builder import GraphBuilder
from .smb_table import emit_csr_decode, emit_smb_rows


def _attrs(node: onnx.NodeProto) -> Dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def unpack_bits_bool(gb: GraphBuilder, words: str, channels: int, name: str, lead_dims: int) -> str:
    """Emit ops turning int32 words [..., words] into a bool mask [..., channels] (bit set = True).

    Works in int32 and bool to keep the load-time folding light (the published
    model has 118 M weights: int64 or float bit planes would cost gigabytes):
    bits 0..30 come from the low 31 bits (a negative word gets 2^31 added, in
    two steps that stay inside int32), bit 31 is the word's sign.
    ``lead_dims`` is the number of axes before the word axis (3 for a conv's
    [O, KH, KW, words], 1 for a linear's [O, words]).
    """
    neg_word = gb.op("Less", [words, gb.const(np.int32(0))], name=f"{name}/word_neg")
    half = gb.const(np.int32(1 << 30))
    low31 = gb.op("Where", [neg_word, gb.op("Add", [gb.op("Add", [words, half], name=f"{name}/wrap1"), half],
                                            name=f"{name}/wrap2"), words], name=f"{name}/low31")
    expanded = gb.op("Unsqueeze", [low31, gb.i64([-1])], name=f"{name}/unsq")
    shifted = gb.op("Div", [expanded, gb.const(np.array([1 << i for i in range(31)], np.int32))], name=f"{name}/shift")
    planes = gb.op("Cast", [gb.op("Mod", [shifted, gb.const(np.int32(2))], name=f"{name}/bit")], to=TensorProto.BOOL,
                   name=f"{name}/bit_bool")
    top = gb.op("Unsqueeze", [neg_word, gb.i64([-1])], name=f"{name}/bit31")
    bits = gb.op("Concat", [planes, top], axis=-1, name=f"{name}/bits")
    # [..., words, 32] -> [..., words*32] (bit i of word j = channel 32j+i), then drop tail bits
    merged = gb.reshape(bits, [0] * lead_dims + [-1], name=f"{name}/merge")
    if channels % contract.WORD_BITS == 0:
        return merged
    return gb.op("Slice", [merged, gb.i64([0]), gb.i64([channels]), gb.i64([-1])], name=f"{name}/tail")


def signed_alpha(
    gb: GraphBuilder, bits: str, alpha: str, channels: int, zero: Optional[str], name: str, lead_dims: int
) -> str:
    """float32 weights alpha[o] * sgn(W) [..., channels] (channel axis last) from the packed inputs."""
    neg = unpack_bits_bool(gb, bits, channels, f"{name}/sign", lead_dims)
    a = gb.reshape(alpha, [-1] + [1] * lead_dims, name=f"{name}/alpha_b")
    w = gb.op("Where", [neg, gb.op("Neg", [a], name=f"{name}/minus_alpha"), a], name=f"{name}/signed_alpha")
    if zero is not None:
        is_zero = unpack_bits_bool(gb, zero, channels, f"{name}/zero", lead_dims)
        w = gb.op("Where", [is_zero, gb.const(np.float32(0.0)), w], name=f"{name}/zeroed")
    return w


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
    w = signed_alpha(gb, bits, alpha, c, zero, name, lead_dims=3)  # [O, KH, KW, C]
    w = gb.op("Transpose", [w], perm=[0, 3, 1, 2], name=f"{name}/w_oihw")
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
    w = signed_alpha(gb, bits, alpha, k, zero, name, lead_dims=1)  # [O, K]
    wt = gb.op("Transpose", [w], perm=[1, 0], name=f"{name}/w_t")
    mm = gb.op("MatMul", [xb, wt], name=f"{name}/matmul")
    lin_out = output if not x_is_fp16 else gb.fresh(f"{name}/y_f32")
    gb.op("Add", [mm, bias], outputs=[lin_out], name=f"{name}/bias")
    if x_is_fp16:
        gb.op("Cast", [lin_out], outputs=[output], to=TensorProto.FLOAT16, name=f"{name}/y_f16")


EXPANSIONS = {contract.CONV_OP: expand_binary_conv2d, contract.LINEAR_OP: expand_binary_linear}

Consts = Callable[[str], np.ndarray]


def expand_side_branches(gb: GraphBuilder, node: onnx.NodeProto, core: str, consts: Consts) -> None:
    """Standard ops for a fused node's side branches, on its core output ``core``, writing the
    node's output: the same ops (and order of additions) the exporter writes for an unfused
    layer, reading the node's own side inputs (contract.SIDE_INPUTS)."""
    attrs = _attrs(node)
    spec = contract.OPS[node.op_type]
    at = spec.layout(attrs, len(node.input))
    ins = list(node.input)
    x, name, conv = ins[0], node.name, node.op_type == contract.CONV_OP
    out = node.output[0]
    has_smb, has_lrmb = "smb_rowptr" in at, "lr_down" in at
    y = core
    if "rprelu" in at:
        table = ins[at["rprelu"]]
        b0, slope, b1 = (gb.reshape(gb.op("Gather", [table, gb.i64(i)], axis=0, name=f"{name}/rprelu_row{i}"),
                                    [-1, 1, 1], name=f"{name}/rprelu_{what}")
                         for i, what in enumerate(("b0", "slope", "b1")))
        y = gb.op("Add", [y, b0], name=f"{name}/rprelu_b0")
        y = gb.op("PRelu", [y, slope], name=f"{name}/rprelu")
        y = gb.op("Add", [y, b1], outputs=[out] if not (has_smb or has_lrmb) else 1, name=f"{name}/rprelu_b1")

    def smb_branch() -> str:
        rows = int(consts(ins[at["alpha"]]).shape[0])  # O
        rowptr = contract.unpack_halves(consts(ins[at["smb_rowptr"]]), rows + 1)
        nnz = int(rowptr[-1])
        width = max(int(np.diff(rowptr).max(initial=0)), 1)
        idx2d, value = emit_csr_decode(gb, ins[at["smb_rowptr"]], ins[at["smb_col"]], ins[at["smb_val"]], rows, nnz,
                                       width, f"{name}/smb_table", rowptr_halves=True)
        idx = gb.reshape(idx2d, [-1], name=f"{name}/smb_index")
        # a linear node's output has its input's rank (the exporter declares it)
        x_rank = 4 if conv else _rank_of(gb, out)
        return emit_smb_rows(gb, x, idx, value, rows, width, name, conv=conv, x_rank=x_rank)

    def lrmb_branch() -> str:
        down, up = ins[at["lr_down"]], ins[at["lr_up"]]
        if conv:
            d4 = gb.op("Unsqueeze", [down, gb.i64([2, 3])], name=f"{name}/lrmb_down_w")
            u4 = gb.op("Unsqueeze", [up, gb.i64([2, 3])], name=f"{name}/lrmb_up_w")
            h = gb.op("Conv", [x, d4], kernel_shape=[1, 1], name=f"{name}/lrmb_down")
            return gb.op("Conv", [h, u4], kernel_shape=[1, 1], name=f"{name}/lrmb_up")
        h = gb.op("MatMul", [x, gb.op("Transpose", [down], perm=[1, 0], name=f"{name}/lrmb_down_t")],
                  name=f"{name}/lrmb_down")
        return gb.op("MatMul", [h, gb.op("Transpose", [up], perm=[1, 0], name=f"{name}/lrmb_up_t")],
                     name=f"{name}/lrmb_up")

    if conv:
        steps = [("smb", smb_branch), ("lrmb", lrmb_branch)]
    else:
        steps = [("lrmb", lrmb_branch), ("smb", smb_branch)]
    present = [(label, fn) for label, fn in steps if (label == "smb" and has_smb) or (label == "lrmb" and has_lrmb)]
    for i, (label, fn) in enumerate(present):
        last = i == len(present) - 1
        y = gb.op("Add", [y, fn()], outputs=[out] if last else 1, name=f"{name}/add_{label}")


def _rank_of(gb: GraphBuilder, x: str) -> int:
    """Rank of a tensor as the graph declares it (value_info, inputs)."""
    for vi in list(gb.value_info) + list(gb.inputs):
        if vi.name == x and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    raise ArtifactError(f"rank of '{x}' is not declared: cannot expand the SMB of the fused linear node writing it")


def expand_node(gb: GraphBuilder, node: onnx.NodeProto, x_is_fp16: bool, consts: Optional[Consts] = None) -> None:
    """Emit the expansion of one custom node into ``gb`` (same input and output names).

    A fused node (side-branch attributes set) also needs ``consts``: initializer name ->
    array (its SMB row starts give the padded row width).
    """
    if node.domain != contract.DOMAIN or node.op_type not in EXPANSIONS:
        raise ArtifactError(f"node '{node.name}' ({node.domain}:{node.op_type}) is not a {contract.DOMAIN} op")
    attrs = _attrs(node)
    spec = contract.OPS[node.op_type]
    if not any(int(attrs.get(a, 0) or 0) for a in spec.side):
        EXPANSIONS[node.op_type](gb, list(node.input), node.output[0], attrs, node.name, x_is_fp16)
        return
    if consts is None:
        raise ArtifactError(f"node '{node.name}' carries fused side branches: expanding it needs the graph's initializers")
    at = spec.layout(attrs, len(node.input))
    core_inputs = [node.input[at[n]] for n in spec.inputs] + ([node.input[at["Wzero"]]] if "Wzero" in at else [])
    core = gb.fresh(f"{node.name}/core")
    EXPANSIONS[node.op_type](gb, core_inputs, core, attrs, node.name, x_is_fp16)
    expand_side_branches(gb, node, core, consts)


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
    by_name = {t.name: t for t in g.initializer}

    def consts(name: str) -> np.ndarray:
        if name not in by_name:
            raise ArtifactError(f"'{name}' is not an initializer of the graph")
        return numpy_helper.to_array(by_name[name])

    # declared ranks of graph tensors (fused linear nodes need their input's rank)
    gb.value_info.extend(g.value_info)
    gb.inputs.extend(g.input)
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
            expand_node(gb, node, fp16, consts)
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
    meta["side_branches"] = "standard"
    helper.set_model_props(out, meta)
    return out


def has_custom_nodes(model: onnx.ModelProto) -> bool:
    return any(n.domain == contract.DOMAIN for n in model.graph.node)


__all__ = ["to_portable", "expand_node", "signed_alpha", "unpack_bits_bool", "has_custom_nodes"]
