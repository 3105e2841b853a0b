"""All SMB (sparse branch) data of a standard-op graph in one compact, shared table.

Used where the SMB runs as standard ops: the portable graph, and ``unet.onnx`` exported
without fused side branches. (Fused, the plugin reads each layer's CSR directly: see
:mod:`.onnx_nodes`.) Stored, three initializers for the whole model:

* ``smb_table.rowptr``: int32 [rows + 1], where each output row's nonzeros start
  (rows of all layers, in graph order), so no running sum is needed to find them;
* ``smb_table.cols``: every nonzero's input index, 16 bits each, two per int32 word
  (:func:`~bimaco_deploy.plugins.contract.pack_halves`);
* ``smb_table.values``: the nonzero values in the graph's float dtype.

A small subgraph of int32 elementwise ops and Gathers, emitted once, turns this into two
padded tables [rows, longest row]: the input index and the value of each slot (padding
slots read the appended (0, 0.0) entry, so they add exactly 0). Each layer then slices its
own rows and row width.

Why this decode and no other: TensorRT is the consumer that matters. onnx-tensorrt 10.x
imports CumSum for floating types only, as a loop over the rows (78,112 iterations for the
published model), and integer ICumulativeLayer appears only in the 10.8 headers; int64
arithmetic on constants is likewise avoidable. Row starts in the file and int32 ops
throughout keep the decode a handful of data-parallel layers on every TensorRT 10.x,
while the file stays compact (about 2 bytes per column index, 4 per row).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ..plugins import contract
from .graph_builder import GraphBuilder
from .layer_params import SparseRows


def i32(gb: GraphBuilder, value) -> str:
    """An int32 constant (index arithmetic of the SMB decode stays in int32)."""
    return gb.const(np.asarray(value, dtype=np.int32))


def _halves(gb: GraphBuilder, words: str, pos: str, name: str, out: str = "") -> str:
    """Entries ``pos`` (int32, any shape) of a table of 16-bit entries packed two per word."""
    word = gb.op("Gather", [words, gb.op("Div", [pos, i32(gb, 2)], name=f"{name}/word_of")], axis=0, name=f"{name}/word")
    half = gb.op("Mod", [pos, i32(gb, 2)], name=f"{name}/half")
    shift = gb.op("Gather", [i32(gb, [1, 1 << contract.HALF_BITS]), half], axis=0, name=f"{name}/shift")
    shifted = gb.op("Div", [word, shift], name=f"{name}/shifted")
    return gb.op("Mod", [shifted, i32(gb, 1 << contract.HALF_BITS)], outputs=[out] if out else 1, name=f"{name}/entry")


def emit_csr_decode(gb: GraphBuilder, rowptr: str, col_words: str, values: str, rows: int, nnz: int, width: int,
                    name: str, *, rowptr_halves: bool = False, index_out: str = "", value_out: str = "") -> Tuple[str, str]:
    """Standard ops: a CSR table -> (index [rows, width] int32, value [rows, width]).

    ``rowptr``: int32 [rows + 1], or with ``rowptr_halves`` 16-bit entries two per word (a
    fused node's); ``col_words`` int32 [ceil(nnz / 2)] (two 16-bit column indices per
    word), ``values`` [nnz]. Slot j of row o holds entry rowptr[o] + j when j < count(o);
    the other slots read an appended (column 0, value 0) entry, so they add exactly 0.
    Only int32 elementwise ops and Gathers: see the module docstring.
    """
    if nnz >= 2**31 - 2:
        raise ValueError(f"{nnz} SMB nonzeros do not fit the int32 index arithmetic of the table")
    if rowptr_halves:
        rowptr = _halves(gb, rowptr, i32(gb, np.arange(rows + 1)), f"{name}/rowptr")
    start = gb.op("Slice", [rowptr, gb.i64([0]), gb.i64([rows]), gb.i64([0])], name=f"{name}/row_start")
    end = gb.op("Slice", [rowptr, gb.i64([1]), gb.i64([rows + 1]), gb.i64([0])], name=f"{name}/row_end")
    cnt = gb.op("Sub", [end, start], name=f"{name}/row_count")
    slot = i32(gb, np.arange(width).reshape(1, width))
    valid = gb.op("Less", [slot, gb.op("Unsqueeze", [cnt, gb.i64([1])], name=f"{name}/count_col")], name=f"{name}/valid")
    pos = gb.op("Add", [gb.op("Unsqueeze", [start, gb.i64([1])], name=f"{name}/start_col"), slot], name=f"{name}/slot_pos")
    pos = gb.op("Where", [valid, pos, i32(gb, nnz)], name=f"{name}/pos")
    # one zero word appended so that the padding entry nnz always has a word to read
    words = gb.op("Concat", [col_words, i32(gb, [0])], axis=0, name=f"{name}/cols_ext")
    index = _halves(gb, words, pos, f"{name}/col", out=index_out)
    vals_ext = gb.op("Concat", [values, gb.fconst([0.0])], axis=0, name=f"{name}/values_ext")
    value = gb.op("Gather", [vals_ext, pos], axis=0, outputs=[value_out] if value_out else 1, name=f"{name}/value")
    return index, value  # type: ignore[return-value]


class SmbTable:
    """Collects the SMBs of one graph; each layer gets its padded (index, value) slices.

    Call :meth:`add` while writing layers (it emits the per-layer Slices) and
    :meth:`finalize` once at the end (it writes the shared decode and moves it
    in front of its users). :class:`GraphBuilder` calls ``finalize`` from
    ``make_model`` for tables registered with ``gb.finalizers``.
    """

    def __init__(self, gb: GraphBuilder):
        self.gb = gb
        self.entries: List[SparseRows] = []
        self.rows = 0
        self.index2d = gb.fresh("smb_table/index")  # [rows, R] int32
        self.value2d = gb.fresh("smb_table/value")  # [rows, R] float
        self.done = False
        gb.finalizers.append(self.finalize)

    def add(self, smb: SparseRows, name: str) -> Tuple[str, str]:
        """(index [O*R_l] int32, value [O, R_l]) of one layer's rows."""
        gb = self.gb
        o, r = smb.out_features, smb.row_width
        start = gb.i64([self.rows, 0])
        end = gb.i64([self.rows + o, r])
        axes = gb.i64([0, 1])
        self.rows += o
        self.entries.append(smb)
        index = gb.op("Slice", [self.index2d, start, end, axes], name=f"{name}/smb_index_rows")
        index = gb.reshape(index, [-1], name=f"{name}/smb_index")
        value = gb.op("Slice", [self.value2d, start, end, axes], name=f"{name}/smb_value")
        return index, value

    def finalize(self) -> None:
        if self.done or not self.entries:
            return
        self.done = True
        gb = self.gb
        first = len(gb.nodes)
        cols = np.concatenate([e.cols for e in self.entries])
        counts = np.concatenate([e.counts for e in self.entries])
        values = np.concatenate([e.values for e in self.entries])
        nnz, rows = int(cols.size), int(counts.size)
        width = max(e.row_width for e in self.entries)
        rowptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        emit_csr_decode(
            gb, gb.initializer("smb_table.rowptr", rowptr), gb.initializer("smb_table.cols", contract.pack_halves(cols)),
            gb.weight("smb_table.values", values), rows, nnz, width, "smb_table",
            index_out=self.index2d, value_out=self.value2d,
        )
        # the decode depends only on initializers: move it in front of every user (topological order)
        decode = gb.nodes[first:]
        del gb.nodes[first:]
        gb.nodes[0:0] = decode


def smb_table_for(gb: GraphBuilder) -> SmbTable:
    """The graph's shared SMB table (created on first use)."""
    table = getattr(gb, "smb_table", None)
    if table is None:
        table = SmbTable(gb)
        gb.smb_table = table  # type: ignore[attr-defined]
    return table


__all__ = ["SmbTable", "smb_table_for", "emit_csr_decode"]


def emit_smb_rows(gb: GraphBuilder, x: str, idx: str, value: str, o: int, r: int, name: str, *, conv: bool,
                  x_rank: int = 4) -> str:
    """The SMB from its padded rows: ``idx`` int32 [O*R] input channels, ``value`` [O, R]."""
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
