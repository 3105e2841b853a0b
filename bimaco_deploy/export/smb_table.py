"""All SMB (sparse branch) data of a graph in one compact, shared table.

Stored (three initializers for the whole model, whatever the layer count):

* ``smb_table.cols``: every nonzero's input index, bit-packed at the width the
  widest layer needs (11 bits for 1280 channels) into int32 words;
* ``smb_table.counts``: nonzeros per output row, bit-packed the same way (5 bits);
* ``smb_table.values``: the nonzero values, in the graph's float dtype.

Nonzeros are grouped by layer, then by output row, in the checkpoint's order.
A small subgraph, emitted once and folded by the runtime at load, turns this
into two padded tables [rows of all layers, longest row]: the input index and
the value of each slot (padding slots point at an appended (0, 0.0) entry, so
they add exactly 0). Each layer then slices its own rows and row width: one
Slice per table. One shared decode instead of one per layer keeps the
published ``unet.onnx`` about 1 MB smaller than per-layer decoders would.

Bit-stream packing: field k occupies bits [k*b, (k+1)*b) of a stream of 31-bit
words (the sign bit of every int32 word stays clear, so words are
non-negative and two consecutive words combine into a non-negative int64).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from onnx import TensorProto

from .graph_builder import GraphBuilder
from .layer_params import SparseRows

PAYLOAD_BITS = 31


def field_bits(max_value: int) -> int:
    """Bits needed for values in [0, max_value]."""
    return max(1, int(max_value).bit_length())


def pack_bitstream(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative ints (< 2^bits, bits <= 31) into int32 words of 31 payload bits.

    One extra zero word is appended so the decoder can always read word j+1.
    """
    v = np.asarray(values, np.int64).reshape(-1)
    if not 1 <= bits <= PAYLOAD_BITS:
        raise ValueError(f"field width must be 1..{PAYLOAD_BITS} bits, got {bits}")
    if v.size and (v.min() < 0 or v.max() >= (1 << bits)):
        raise ValueError(f"values must lie in [0, {1 << bits}) to pack in {bits} bits")
    total_bits = v.size * bits
    n_words = (total_bits + PAYLOAD_BITS - 1) // PAYLOAD_BITS + 1
    stream = np.zeros(n_words * PAYLOAD_BITS, np.uint8)
    if v.size:
        bit_idx = np.arange(bits, dtype=np.int64)
        field_bits_arr = ((v[:, None] >> bit_idx) & 1).astype(np.uint8)  # [n, bits], LSB first
        stream[: total_bits] = field_bits_arr.reshape(-1)
    words = (stream.reshape(n_words, PAYLOAD_BITS).astype(np.int64) << np.arange(PAYLOAD_BITS, dtype=np.int64)).sum(axis=1)
    return words.astype(np.int32)


def emit_unpack_bitstream(gb: GraphBuilder, words: str, count: int, bits: int, name: str) -> str:
    """Standard ops: bit-stream words -> int64 [count] (inverse of :func:`pack_bitstream`)."""
    w64 = gb.op("Cast", [words], to=TensorProto.INT64, name=f"{name}/i64")
    k = gb.op("Range", [gb.i64(0), gb.i64(count), gb.i64(1)], name=f"{name}/field_ids")
    off = gb.op("Mul", [k, gb.i64(bits)], name=f"{name}/bit_offset")
    j = gb.op("Div", [off, gb.i64(PAYLOAD_BITS)], name=f"{name}/word")
    shift = gb.op("Mod", [off, gb.i64(PAYLOAD_BITS)], name=f"{name}/shift")
    lo = gb.op("Gather", [w64, j], axis=0, name=f"{name}/lo")
    hi = gb.op("Gather", [w64, gb.op("Add", [j, gb.i64(1)], name=f"{name}/next")], axis=0, name=f"{name}/hi")
    both = gb.op("Add", [lo, gb.op("Mul", [hi, gb.i64(1 << PAYLOAD_BITS)], name=f"{name}/hi_up")], name=f"{name}/pair")
    scale = gb.op("Gather", [gb.i64([1 << i for i in range(PAYLOAD_BITS)]), shift], axis=0, name=f"{name}/pow2")
    return gb.op("Mod", [gb.op("Div", [both, scale], name=f"{name}/shifted"), gb.i64(1 << bits)], name=f"{name}/field")


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
        self.index2d = gb.fresh("smb_table/index")  # [rows, R] int64
        self.value2d = gb.fresh("smb_table/value")  # [rows, R] float
        self.done = False
        gb.finalizers.append(self.finalize)

    def add(self, smb: SparseRows, name: str) -> Tuple[str, str]:
        """(index [O*R_l] int64, value [O, R_l]) of one layer's rows."""
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
        cbits, nbits = field_bits(cols.max(initial=0)), field_bits(counts.max(initial=0))
        col_ids = emit_unpack_bitstream(gb, gb.initializer("smb_table.cols", pack_bitstream(cols, cbits)), nnz, cbits, "smb_table/cols")
        cnt = emit_unpack_bitstream(gb, gb.initializer("smb_table.counts", pack_bitstream(counts, nbits)), rows, nbits, "smb_table/counts")
        vals = gb.weight("smb_table.values", values)
        start = gb.op("CumSum", [cnt, gb.i64(0)], exclusive=1, name="smb_table/row_start")
        slot = gb.i64(np.arange(width).reshape(1, width))
        valid = gb.op("Less", [slot, gb.op("Unsqueeze", [cnt, gb.i64([1])], name="smb_table/count_col")], name="smb_table/valid")
        pos = gb.op("Add", [gb.op("Unsqueeze", [start, gb.i64([1])], name="smb_table/start_col"), slot], name="smb_table/slot_pos")
        pos = gb.op("Where", [valid, pos, gb.i64(nnz)], name="smb_table/pos")
        cols_ext = gb.op("Concat", [col_ids, gb.i64([0])], axis=0, name="smb_table/cols_ext")
        vals_ext = gb.op("Concat", [vals, gb.fconst([0.0])], axis=0, name="smb_table/values_ext")
        gb.op("Gather", [cols_ext, pos], axis=0, outputs=[self.index2d], name="smb_table/index")
        gb.op("Gather", [vals_ext, pos], axis=0, outputs=[self.value2d], name="smb_table/value")
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
