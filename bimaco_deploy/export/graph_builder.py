"""A small helper for writing ONNX graphs by hand.

The exporter writes every graph itself (no tracing), so names, shapes and the
exact op sequence are under our control. :class:`GraphBuilder` keeps the nodes,
initializers and value_info of one graph, hands out unique tensor names and
deduplicates small constants.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Standard-domain opset every graph is written for.
DEFAULT_OPSET = 17
#: IR version matching opset 17; newer onnx packages default to an IR that
#: older runtimes (and TensorRT 10.3's parser) refuse.
IR_VERSION = 8

Names = Union[str, List[str]]

#: Shape plumbing whose node names would only add bytes: written unnamed (names are optional in ONNX).
UNNAMED_OPS = frozenset({"Shape", "Concat", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Range", "Equal", "Cast", "Identity"})

_NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def onnx_dtype(dtype: Union[np.dtype, type]) -> int:
    """ONNX element type of a numpy dtype."""
    return _NP_TO_ONNX[np.dtype(dtype)]


class GraphBuilder:
    """Accumulates one ONNX graph.

    ``float_dtype`` is the dtype of activations and of full-precision weights
    (float32 or float16); integer and packed tensors keep their own types.
    """

    def __init__(self, float_dtype: Union[np.dtype, type] = np.float32, *, prefix: str = "", compact_names: bool = True):
        self.float_dtype = np.dtype(float_dtype)
        if self.float_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"float dtype must be float32 or float16, got {self.float_dtype}")
        self.prefix = prefix
        self.compact_names = compact_names
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.value_info: List[onnx.ValueInfoProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._used: Dict[str, int] = {}
        self._const_cache: Dict[Tuple[str, Tuple[int, ...], bytes], str] = {}
        self.domains: Dict[str, int] = {}
        self._short = 0
        #: called by make_model before assembling (shared tables written once, after all users)
        self.finalizers: List = []

    @property
    def float_type(self) -> int:
        return onnx_dtype(self.float_dtype)

    # ------------------------------------------------------------------ names
    def fresh(self, base: str) -> str:
        """A tensor/node name derived from ``base`` that is not used yet."""
        base = self.prefix + base
        n = self._used.get(base, 0)
        candidate = base if n == 0 else f"{base}__{n}"
        while candidate in self._used and candidate != base or (n == 0 and base in self._used):
            n += 1
            candidate = f"{base}__{n}"
        self._used[base] = n + 1
        self._used[candidate] = max(self._used.get(candidate, 0), 1)
        return candidate

    def short_name(self) -> str:
        """A compact unique tensor name (``t`` + base-36 counter)."""
        while True:
            self._short += 1
            n, digits = self._short, ""
            while n:
                n, r = divmod(n, 36)
                digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
            name = self.prefix + "t" + digits
            if name not in self._used:
                self._used[name] = 1
                return name

    def reserve(self, name: str) -> None:
        """Mark a name as taken (graph inputs, names copied from another graph)."""
        self._used.setdefault(name, 1)

    # ------------------------------------------------------------------ tensors
    def initializer(self, name: str, array: np.ndarray) -> str:
        """Add ``array`` as an initializer under (a unique variant of) ``name``."""
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C", copy=True), name))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """A full-precision weight, stored in the graph's float dtype."""
        return self.initializer(name, np.asarray(array, dtype=np.float32).astype(self.float_dtype))

    def const(self, value: Union[np.ndarray, Sequence, float, int], dtype: Optional[Union[np.dtype, type]] = None) -> str:
        """A small constant initializer, shared between all users of the same value."""
        arr = np.asarray(value, dtype=dtype)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(self.float_dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            self._const_cache[key] = self.initializer("const", arr)
        return self._const_cache[key]

    def fconst(self, value: Union[np.ndarray, Sequence, float]) -> str:
        """A float constant in the graph's float dtype."""
        return self.const(np.asarray(value, dtype=np.float32).astype(self.float_dtype))

    def i64(self, value: Union[Sequence[int], int]) -> str:
        """An int64 constant (shapes, axes, indices)."""
        return self.const(np.asarray(value, dtype=np.int64))

    # ------------------------------------------------------------------ nodes
    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        name: Optional[str] = None,
        outputs: Union[int, Sequence[str]] = 1,
        domain: str = "",
        **attrs: object,
    ) -> Names:
        """Append a node; returns its output name (or list of names when it has several)."""
        node_name = self.fresh(name or op_type)
        if isinstance(outputs, int):
            # short tensor names: node names carry the meaning, and long tensor names would
            # cost about 1 MB of the published unet.onnx (every name is stored at least twice)
            out_names = [self.short_name() for _ in range(outputs)]
        else:
            out_names = list(outputs)
            for o in out_names:
                self.reserve(o)
        keep_name = not (self.compact_names and op_type in UNNAMED_OPS and not domain)
        node = helper.make_node(op_type, list(inputs), out_names, name=node_name if keep_name else None,
                                domain=domain or None, **attrs)
        if domain:
            node.domain = domain
        self.nodes.append(node)
        return out_names[0] if len(out_names) == 1 else out_names

    def add_input(self, name: str, elem_type: int, shape: Sequence[Union[int, str, None]]) -> str:
        self.reserve(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, name: str, elem_type: int, shape: Optional[Sequence[Union[int, str, None]]]) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape)))
        return name

    def annotate(self, name: str, elem_type: int, shape: Optional[Sequence[Union[int, str, None]]]) -> None:
        """Record the type (and shape where known) of an intermediate tensor."""
        self.value_info.append(helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape)))

    def rename_output(self, current: str, new: str) -> str:
        """Give the tensor ``current`` (produced by the last node that wrote it) the name ``new``."""
        for node in reversed(self.nodes):
            for i, o in enumerate(node.output):
                if o == current:
                    node.output[i] = new
                    self.reserve(new)
                    for other in self.nodes:
                        for j, inp in enumerate(other.input):
                            if inp == current:
                                other.input[j] = new
                    return new
        raise KeyError(f"no node produces {current!r}")

    # ------------------------------------------------------------------ model
    def make_model(
        self,
        graph_name: str,
        *,
        opset: int = DEFAULT_OPSET,
        metadata: Optional[Dict[str, str]] = None,
        doc: str = "",
    ) -> onnx.ModelProto:
        """Assemble the accumulated graph into a ModelProto."""
        for fin in self.finalizers:
            fin()
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            self.inputs,
            self.outputs,
            initializer=self.initializers,
            value_info=self.value_info,
            doc_string=doc or None,
        )
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in sorted(self.domains.items())]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="bimaco-deploy", ir_version=IR_VERSION)
        if metadata:
            helper.set_model_props(model, dict(metadata))
        return model

    # ------------------------------------------------------------------ common patterns
    def shape_of(self, x: str, start: Optional[int] = None, end: Optional[int] = None) -> str:
        attrs: Dict[str, int] = {}
        if start is not None:
            attrs["start"] = start
        if end is not None:
            attrs["end"] = end
        return self.op("Shape", [x], **attrs)

    def concat_i64(self, parts: Iterable[Union[str, Sequence[int]]]) -> str:
        """Concatenate 1-D int64 pieces (tensor names or literal lists) into one shape tensor."""
        names = [p if isinstance(p, str) else self.i64(list(p)) for p in parts]
        return names[0] if len(names) == 1 else self.op("Concat", names, axis=0)

    def reshape(self, x: str, shape: Union[str, Sequence[int]], name: Optional[str] = None) -> str:
        target = shape if isinstance(shape, str) else self.i64(list(shape))
        return self.op("Reshape", [x, target], name=name)

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], to=to)
