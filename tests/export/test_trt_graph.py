"""The TensorRT-bound ``unet.onnx`` holds only what TensorRT 10.x (JetPack 6: 10.3) imports well.

onnx-tensorrt 10.x imports CumSum for floating types only, and as a loop whose trip count
is the number of rows it sums (78,112 for the published model's SMB table); integer
ICumulativeLayer first appears in the 10.8 headers. So the graph must hold no CumSum, no
Loop/Scan/If, and no int64 arithmetic whose inputs are all constants (such subgraphs are
what the exporter must have folded itself). Every op must be on onnx-tensorrt's 10.x
support list with the dtype it runs in here, and the restrictions the list names for our
ops (constant axes, 2-D pooling, the Resize modes) must hold.

The support table below is transcribed from onnx-tensorrt's ``docs/operators.md`` at the
10.1 GA release (the importer JetPack 6's TensorRT 10.3 ships is of that line): only the
rows of ops this exporter writes, types spelled as ONNX TensorProto names.
"""

from __future__ import annotations

import collections
from typing import Dict, List, Set

import numpy as np
import onnx
import pytest

from bimaco_deploy.plugins import contract

from conftest import need as _need

_F = {"FLOAT", "FLOAT16", "BFLOAT16"}
_FI = _F | {"INT32", "INT64"}
_ALL = _FI | {"BOOL"}
#: op -> types onnx-tensorrt 10.1 GA lists as supported (docs/operators.md).
ONNX_TRT_10X: Dict[str, Set[str]] = {
    "Abs": _FI, "Add": _FI, "AveragePool": _F, "Cast": _ALL | {"UINT8"}, "Concat": _ALL, "Conv": _F, "Cos": _F,
    "CumSum": _F,
    "Div": _FI, "Equal": _FI, "Erf": _F, "Expand": _ALL, "Gather": _ALL, "Identity": _ALL,
    "InstanceNormalization": _F, "Less": _FI, "MatMul": _F, "Mod": _FI, "Mul": _FI, "Neg": _FI, "PRelu": _F,
    "Range": _FI, "ReduceMean": _FI, "ReduceSum": _FI, "Reshape": _ALL, "Resize": _F, "Shape": _ALL,
    "Sigmoid": _F, "Sign": _FI, "Sin": _F, "Slice": _ALL, "Softmax": _F, "Split": _ALL, "Squeeze": _ALL, "Sub": _FI,
    "Transpose": _ALL, "Unsqueeze": _ALL, "Where": _ALL,
}
#: comparisons are typed by their inputs (their output is BOOL)
TYPED_BY_INPUT = {"Equal", "Less", "Shape"}
#: inputs that the list says must be initializers (constant axes)
CONSTANT_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "ReduceSum": 1, "ReduceMean": 1}
#: never in a TensorRT-bound graph: loops (CumSum imports as one) and control flow
FORBIDDEN = {"CumSum", "Loop", "Scan", "If"}
#: arithmetic that must not run on int64 constants inside the engine
ARITHMETIC = {"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "CumSum", "Range", "ReduceSum", "ReduceProd", "Max",
              "Min", "Pow", "MatMul"}


def _types(model: onnx.ModelProto) -> Dict[str, str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({t.name: t.data_type for t in g.initializer})
    return {k: onnx.TensorProto.DataType.Name(v) for k, v in out.items() if v}


def trt_graph_problems(model: onnx.ModelProto) -> List[str]:
    """Everything in ``model`` that onnx-tensorrt 10.x would refuse or import badly ([] when none)."""
    g = model.graph
    types = _types(model)
    constant = {t.name for t in g.initializer}
    problems = []
    for n in g.node:
        where = f"{n.op_type} '{n.name or n.output[0]}'"
        if n.domain == contract.DOMAIN:
            continue  # our plugin; its inputs are checked by the plugin tests
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: foreign domain {n.domain}")
            continue
        if n.op_type in FORBIDDEN:
            problems.append(f"{where}: {n.op_type} has no place in a TensorRT-bound graph")
        inputs = [i for i in n.input if i]
        is_const = bool(inputs) and all(i in constant for i in inputs)
        if is_const:
            constant.update(n.output)
            if n.op_type in ARITHMETIC and any(types.get(o) == "INT64" for o in n.output):
                problems.append(f"{where}: int64 arithmetic on constants")
        if n.op_type not in ONNX_TRT_10X:
            problems.append(f"{where}: not in the support table of this test (add it from onnx-tensorrt's list)")
            continue
        typed = n.input[0] if n.op_type in TYPED_BY_INPUT else n.output[0]
        dtype = types.get(typed)
        if dtype is None:
            problems.append(f"{where}: type of '{typed}' unknown after shape inference")
        elif dtype not in ONNX_TRT_10X[n.op_type]:
            problems.append(f"{where}: runs in {dtype}, onnx-tensorrt 10.x supports {sorted(ONNX_TRT_10X[n.op_type])}")
        if n.op_type == "Cast" and types.get(n.input[0]) not in ONNX_TRT_10X["Cast"]:
            problems.append(f"{where}: casts from {types.get(n.input[0])}")
        k = CONSTANT_INPUT.get(n.op_type)
        if k is not None and len(n.input) > k and n.input[k] and n.input[k] not in {t.name for t in g.initializer}:
            problems.append(f"{where}: input {k} (axes) must be an initializer")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "AveragePool" and len(attrs.get("kernel_shape", ())) != 2:
            problems.append(f"{where}: not 2-D pooling")
        if n.op_type == "Resize" and (attrs.get("mode", b"nearest") not in (b"nearest", b"linear")
                                      or attrs.get("coordinate_transformation_mode") not in (None, b"asymmetric",
                                                                                             b"half_pixel",
                                                                                             b"align_corners")):
            problems.append(f"{where}: Resize mode {attrs} not supported")
    return problems


def op_counts(model: onnx.ModelProto) -> Dict[str, int]:
    return dict(collections.Counter(f"{n.domain + ':' if n.domain else ''}{n.op_type}" for n in model.graph.node))


# --------------------------------------------------------------------------- the checker itself


def test_checker_flags_the_old_smb_decode():
    """The rule catches what the issue found: an int64 CumSum decode of constant tables."""
    from bimaco_deploy.export.graph_builder import GraphBuilder

    gb = GraphBuilder()
    counts = gb.initializer("counts", np.array([1, 2, 0, 3], np.int64))
    start = gb.op("CumSum", [counts, gb.i64(0)], exclusive=1, name="row_start")
    pos = gb.op("Add", [start, gb.i64([1])], name="pos")
    gb.op("Identity", [pos], outputs=["Y"])
    gb.add_output("Y", onnx.TensorProto.INT64, [4])
    problems = trt_graph_problems(gb.make_model("old"))
    assert any("CumSum" in p and "no place" in p for p in problems)
    assert any("CumSum" in p and "runs in INT64" in p for p in problems)
    assert any("'pos'" in p and "int64 arithmetic on constants" in p for p in problems)


def test_checker_accepts_shape_arithmetic_and_int32_decodes():
    from bimaco_deploy.export.graph_builder import GraphBuilder

    gb = GraphBuilder()
    x = gb.add_input("X", onnx.TensorProto.FLOAT, ["N", 4])
    half = gb.op("Div", [gb.shape_of(x), gb.i64([2])], name="half_shape")  # run-time shape maths: fine
    idx = gb.op("Add", [gb.const(np.arange(4, dtype=np.int32)), gb.const(np.int32(0))], name="idx")
    y = gb.op("Gather", [x, idx], axis=1, name="g")
    gb.op("Reshape", [y, half], outputs=["Y"])
    gb.add_output("Y", onnx.TensorProto.FLOAT, None)
    assert trt_graph_problems(gb.make_model("ok")) == []


# --------------------------------------------------------------------------- the exported graphs


@pytest.fixture(scope="module")
def tiny():
    from bimaco_deploy.export.layer_params import state_to_numpy
    from bimaco_deploy.models import load_config
    from bimaco_deploy.models.checkpoint import read_state_dict

    return load_config(_need("config.yaml")), state_to_numpy(read_state_dict(_need("bimacosr_tiny.pth")))


def check_fused_structure(model: onnx.ModelProto) -> None:
    """A fused unet.onnx: every binary layer one node carrying its side branches, whose
    tables are initializers (plugin inputs TensorRT fills once), and no standard-op side
    branch left (no SMB gather, no RPReLU, no LRMB Conv/MatMul)."""
    inits = {t.name for t in model.graph.initializer}
    custom = [n for n in model.graph.node if n.domain == contract.DOMAIN]
    for n in custom:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        spec = contract.OPS[n.op_type]
        layout = spec.layout(attrs, len(n.input))
        assert attrs.get("smb") or attrs.get("rprelu"), n.name  # every layer has RPReLU or an SMB
        assert all(n.input[i] in inits for name, i in layout.items() if name != "X"), n.name
    names = [n.name or "" for n in model.graph.node]
    for part in ("/smb_gather", "/rprelu", "/lrmb_down", "/lrmb_up", "smb_table/"):
        assert not any(part in nm for nm in names), part


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "standard"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_tiny_unet_onnx_is_tensorrt_10x_clean(tiny, dtype, fuse):
    from bimaco_deploy.export.unet_graph import build_unet_graph

    cfg, state = tiny
    model = build_unet_graph(cfg.unet, state, float_dtype=dtype, fuse_side_branches=fuse).model
    assert trt_graph_problems(model) == []
    counts = op_counts(model)
    print(f"tiny unet.onnx ({np.dtype(dtype).name}, {'fused' if fuse else 'standard'}): {len(model.graph.node)} "
          f"nodes: {sorted(counts.items())}")
    assert counts.get(f"{contract.DOMAIN}:{contract.CONV_OP}") == 117
    if fuse:
        check_fused_structure(model)
        assert "PRelu" not in counts and "ReduceSum" not in counts


@pytest.mark.slow
def test_published_unet_onnx_is_tensorrt_10x_clean():
    """The published architecture (random weights: the structure is what counts here), both forms."""
    from bimaco_deploy.export.layer_params import state_to_numpy
    from bimaco_deploy.export.unet_graph import build_unet_graph
    from bimaco_deploy.models import load_config, load_unet

    cfg = load_config("bimacosr")
    model = load_unet(cfg, None, seed=0)
    state = state_to_numpy(model.state_dict())
    del model
    for fuse in (True, False):
        onnx_model = build_unet_graph(cfg.unet, state, fuse_side_branches=fuse).model
        assert trt_graph_problems(onnx_model) == []
        counts = op_counts(onnx_model)
        print(f"published unet.onnx ({'fused' if fuse else 'standard'}): {len(onnx_model.graph.node)} nodes: "
              f"{sorted(counts.items())}")
        assert counts.get(f"{contract.DOMAIN}:{contract.CONV_OP}", 0) + counts.get(
            f"{contract.DOMAIN}:{contract.LINEAR_OP}", 0) == 178
        if fuse:
            check_fused_structure(onnx_model)
        del onnx_model
