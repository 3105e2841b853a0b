"""The op contract: the one home of the custom binary ops (version 1).

Everything that produces or consumes a ``bimaco`` node follows this module: the
ONNX exporter, the portable (standard-op) expansion, the torch custom ops, the
CPU/CUDA kernels (through ``plugins_cpp/include/bimaco/contract.h``, which a
test holds to the constants here) and the TensorRT plugin.

Semantics (see DESIGN.md, "The op contract"):

* ``sgn(v)`` is +1, -1 or 0 for v > 0, v < 0, v == 0, exactly like ``torch.sign``.
* Sign bits are packed 32 to an int32 word along the input-channel axis; bit
  ``i`` of word ``j`` stands for channel ``32*j + i``; a set bit means negative.
  Unused tail bits are written as 0 and must not change any result.
* A weight that is exactly zero has its sign bit clear and its bit set in the
  optional zero mask ``Wzero`` (same layout as ``Wbits``). Activation zeros are
  found by the kernel from X itself.
* BinaryConv2d: ``Y[n,o,p] = bias[o] + alpha[o] * sum_k s[n, p*stride + k - pad] *
  dot_k`` where ``s`` is the per-pixel mean of |X| over channels (0 at padded
  pixels) and ``dot_k`` is the exact integer sum of sgn(X) * sgnW over channels.
* BinaryLinear: ``Y = bias + alpha * s * dot`` with ``s`` the per-row mean of |X|.

Fused side branches (attributes ``rprelu``, ``smb``, ``lrmb_rank``, all 0 by default: the
plain op above). A BiMaCoSR binary layer is the core plus full-precision side branches;
a node may carry them, applied to the core's output in the reference's order:

* conv:   ``Y = ((RPReLU(core) + SMB(X)) + LRMB(X))``
* linear: ``Y = ((core + LRMB(X)) + SMB(X))``

with ``RPReLU(v) = P(v + b0) + b1``, ``P(u) = u if u > 0 else slope * u`` (per output
channel); ``SMB(X)[.., o, ..] = sum over o's entries e of val[e] * X[.., col[e], ..]``
(entries ``rowptr[o] .. rowptr[o+1]-1``, CSR over output channels, summed in entry
order); ``LRMB(X) = up (down X)`` over the channel axis (rank ``lrmb_rank``). Each branch
is summed on its own, then added. SMB and LRMB read X at the output's own pixel: a conv
that carries them has stride 1 and an output the size of its input. The extra inputs
follow bias (and Wzero, when present) in this order, as many as the attributes announce:
``rprelu`` [3, O] (rows b0, slope, b1), ``smb_rowptr`` int32 [ceil((O + 1) / 2)] and
``smb_col`` int32 [ceil(nnz / 2)] (16-bit row starts and column indices, two per word:
:func:`smb_csr`), ``smb_val`` [nnz], ``lr_down`` [r, C], ``lr_up`` [O, r]; the float ones
in X's dtype. The CPU ops ``binary_conv2d_fused`` / ``binary_linear_fused`` compute the
same maths (int32 row starts, int16 column table, float32 only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

#: ONNX domain of the custom nodes, and the opset version we register for it.
DOMAIN = "bimaco"
DOMAIN_VERSION = 1
#: TensorRT looks plugins up by (op_type, plugin_version, plugin_namespace).
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "bimaco"
#: Version of this contract, recorded in ONNX metadata.
CONTRACT_VERSION = 1
#: Bits per packed word; int32 is the only packing that survives the TensorRT parser.
WORD_BITS = 32

CONV_OP = "BinaryConv2d"
LINEAR_OP = "BinaryLinear"


@dataclass(frozen=True)
class AttrSpec:
    """One node attribute: its name, ONNX type name and default (None = required)."""

    name: str
    onnx_type: str  # "INT", "INTS", "STRING"
    default: object = None


#: Side-branch attributes and the inputs each one adds (when nonzero), in input order.
SIDE_INPUTS = {
    "rprelu": ("rprelu",),
    "smb": ("smb_rowptr", "smb_col", "smb_val"),
    "lrmb_rank": ("lr_down", "lr_up"),
}
#: Side inputs that are int32; the others have X's float dtype.
SIDE_INT_INPUTS = ("smb_rowptr", "smb_col")
#: The largest LRMB rank the kernels take (the published model uses 8).
MAX_LRMB_RANK = 64


@dataclass(frozen=True)
class OpSpec:
    """Name, inputs, attributes and output of one custom op."""

    name: str
    inputs: Tuple[str, ...]
    optional_inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    attributes: Tuple[AttrSpec, ...] = field(default_factory=tuple)
    #: side-branch attributes this op accepts, in the order their inputs follow
    side: Tuple[str, ...] = ()

    def attribute(self, name: str) -> AttrSpec:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"{self.name} has no attribute {name!r}")

    def input_names(self, attrs: Mapping[str, object], has_wzero: bool) -> Tuple[str, ...]:
        """Every input of a node with these attributes, in order."""
        names = self.inputs + (("Wzero",) if has_wzero else ())
        for a in self.side:
            if int(attrs.get(a, 0) or 0):  # type: ignore[call-overload]
                names += SIDE_INPUTS[a]
        return names

    def layout(self, attrs: Mapping[str, object], n_inputs: int) -> Dict[str, int]:
        """Input name -> position for a node with these attributes and ``n_inputs`` inputs.

        Wzero is told apart by the count alone: the side inputs are fixed by the attributes.
        """
        for has_wzero in (False, True):
            names = self.input_names(attrs, has_wzero)
            if len(names) == n_inputs:
                return {n: i for i, n in enumerate(names)}
        want = len(self.input_names(attrs, False))
        raise ValueError(f"{self.name} with {dict(attrs)} takes {want} or {want + 1} inputs, got {n_inputs}")


_PLUGIN_ATTRS = (
    AttrSpec("plugin_version", "STRING", PLUGIN_VERSION),
    AttrSpec("plugin_namespace", "STRING", PLUGIN_NAMESPACE),
)

BINARY_CONV2D = OpSpec(
    name=CONV_OP,
    inputs=("X", "Wbits", "alpha", "bias"),
    optional_inputs=("Wzero",) + SIDE_INPUTS["rprelu"] + SIDE_INPUTS["smb"] + SIDE_INPUTS["lrmb_rank"],
    outputs=("Y",),
    attributes=(
        AttrSpec("in_channels", "INT"),
        AttrSpec("kernel_shape", "INTS"),
        AttrSpec("strides", "INTS", (1, 1)),
        AttrSpec("pads", "INTS", (0, 0, 0, 0)),  # ONNX order: top, left, bottom, right
        AttrSpec("rprelu", "INT", 0),
        AttrSpec("smb", "INT", 0),
        AttrSpec("lrmb_rank", "INT", 0),
    )
    + _PLUGIN_ATTRS,
    side=("rprelu", "smb", "lrmb_rank"),
)

BINARY_LINEAR = OpSpec(
    name=LINEAR_OP,
    inputs=("X", "Wbits", "alpha", "bias"),
    optional_inputs=("Wzero",) + SIDE_INPUTS["smb"] + SIDE_INPUTS["lrmb_rank"],
    outputs=("Y",),
    attributes=(AttrSpec("in_features", "INT"), AttrSpec("smb", "INT", 0), AttrSpec("lrmb_rank", "INT", 0))
    + _PLUGIN_ATTRS,
    side=("smb", "lrmb_rank"),
)

OPS = {BINARY_CONV2D.name: BINARY_CONV2D, BINARY_LINEAR.name: BINARY_LINEAR}


def num_words(channels: int) -> int:
    """Number of int32 words that hold ``channels`` sign bits."""
    if channels <= 0:
        raise ValueError(f"channel count must be positive, got {channels}")
    return (channels + WORD_BITS - 1) // WORD_BITS


# --------------------------------------------------------------------------- packing


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """Pack a boolean array along its LAST axis into int32 words (bit i of word j = element 32j+i).

    Tail bits of the last word are 0.
    """
    mask = np.asarray(mask, dtype=bool)
    c = mask.shape[-1]
    nw = num_words(c)
    padded = np.zeros(mask.shape[:-1] + (nw * WORD_BITS,), dtype=bool)
    padded[..., :c] = mask
    # little-endian bit order inside each byte, little-endian bytes inside each word
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")
    as_bytes = np.ascontiguousarray(as_bytes).reshape(mask.shape[:-1] + (nw, 4))
    words = as_bytes.view("<u4").reshape(mask.shape[:-1] + (nw,))
    return words.astype(np.uint32).view(np.int32)


def unpack_bits(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: int32 words along the last axis -> bool array of ``channels``."""
    words = np.ascontiguousarray(np.asarray(words, dtype=np.int32))
    nw = words.shape[-1]
    if nw != num_words(channels):
        raise ValueError(f"{nw} words cannot hold exactly {channels} channels (need {num_words(channels)})")
    as_bytes = words.astype("<i4").view(np.uint8).reshape(words.shape[:-1] + (nw * 4,))
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little").astype(bool)
    return bits[..., :channels]


@dataclass
class PackedWeight:
    """A binary layer's weight in contract form.

    ``bits`` and ``zero`` have the channel axis last and packed: [O, KH, KW, words]
    for a conv, [O, words] for a linear. ``zero`` is None when no weight is exactly 0
    in a channel that has nonzero weights (all-zero channels need no mask: alpha = 0).
    """

    bits: np.ndarray
    alpha: np.ndarray
    zero: Optional[np.ndarray]
    in_channels: int
    num_zero_weights: int


def pack_weight(weight: np.ndarray) -> PackedWeight:
    """Binarize a latent float weight ([O, C, KH, KW] or [O, K]) into sign bits + alpha (+ zero mask).

    alpha[o] = mean |W[o]| (float32), as in the original layer.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim == 4:
        chan_last = np.transpose(w, (0, 2, 3, 1))  # O, KH, KW, C
    elif w.ndim == 2:
        chan_last = w
    else:
        raise ValueError(f"binary weight must be 2-D or 4-D, got shape {w.shape}")
    c = chan_last.shape[-1]
    alpha = np.abs(w.reshape(w.shape[0], -1)).mean(axis=1, dtype=np.float32).astype(np.float32)
    bits = pack_bits(chan_last < 0)
    zeros = chan_last == 0
    # zeros in all-zero channels are harmless (alpha = 0 multiplies them); only scattered ones need a mask
    scattered = zeros & (alpha != 0).reshape((-1,) + (1,) * (zeros.ndim - 1))
    n_zero = int(zeros.sum())
    zero = pack_bits(zeros) if scattered.any() else None
    return PackedWeight(bits=bits, alpha=alpha, zero=zero, in_channels=c, num_zero_weights=n_zero)


def unpack_weight_signs(bits: np.ndarray, channels: int, zero: Optional[np.ndarray] = None) -> np.ndarray:
    """Signs (+1/-1/0 as int8) with the channel axis last, from packed bits and an optional zero mask."""
    neg = unpack_bits(bits, channels)
    sgn = np.where(neg, -1, 1).astype(np.int8)
    if zero is not None:
        sgn[unpack_bits(zero, channels)] = 0
    return sgn


# --------------------------------------------------------------------------- 16-bit tables

#: The fused SMB's index tables hold 16-bit entries, two per int32 word: entry 2j in bits
#: 0-15 and entry 2j+1 in bits 16-31 of word j. On a little-endian machine these words are
#: byte for byte an int16 array (the CPU kernels' column table is one). Entries stay below
#: 2^15, so every word is non-negative and standard int32 Div/Mod can take it apart.
HALF_BITS = 16
#: SMB column indices are input channels below this.
SMB_MAX_CHANNELS = 1 << 15
#: A fused node's SMB row starts run up to its entry count: at most this many entries.
SMB_MAX_ENTRIES = (1 << 15) - 1


def pack_halves(values: np.ndarray) -> np.ndarray:
    """Integers [n] (each in [0, 2^15)) -> int32 words [ceil(n/2)], two 16-bit entries per word."""
    c = np.asarray(values, dtype=np.int64).reshape(-1)
    if c.size and (c.min() < 0 or c.max() >= 1 << 15):
        raise ValueError(f"16-bit table entries must lie in [0, {1 << 15}), got {c.min()}..{c.max()}")
    padded = np.zeros(2 * ((c.size + 1) // 2), np.int64)
    padded[: c.size] = c
    pairs = padded.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << HALF_BITS)).astype(np.int32)


def unpack_halves(words: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_halves`: the first ``count`` entries, int64."""
    w = np.asarray(words, dtype=np.int64).reshape(-1)
    if w.size != (count + 1) // 2:
        raise ValueError(f"{w.size} words do not hold exactly {count} 16-bit entries (need {(count + 1) // 2})")
    both = np.stack([w & 0xFFFF, (w >> HALF_BITS) & 0xFFFF], axis=1).reshape(-1)
    return both[:count]


def smb_csr(counts: np.ndarray, cols: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A fused node's SMB index tables from per-row counts and the entries' columns:
    (smb_rowptr, smb_col), both 16-bit entries packed by :func:`pack_halves`."""
    counts = np.asarray(counts, np.int64)
    nnz = int(counts.sum())
    if nnz > SMB_MAX_ENTRIES:
        raise ValueError(f"{nnz} SMB entries in one layer exceed the fused form's {SMB_MAX_ENTRIES}")
    if np.size(cols) and int(np.max(cols)) >= SMB_MAX_CHANNELS:
        raise ValueError(f"SMB column {int(np.max(cols))} is beyond the {SMB_MAX_CHANNELS} channels a table holds")
    return pack_halves(np.concatenate([[0], np.cumsum(counts)])), pack_halves(cols)


# --------------------------------------------------------------------------- shapes


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> int:
    """Output extent of one spatial axis (floor division, as ONNX Conv)."""
    out = (size + pad_begin + pad_end - kernel) // stride + 1
    if out <= 0:
        raise ValueError(
            f"input extent {size} is too small for kernel {kernel}, stride {stride}, pads ({pad_begin}, {pad_end})"
        )
    return out


# --------------------------------------------------------------------------- numpy reference


def binary_conv2d_reference(
    x: np.ndarray,
    wbits: np.ndarray,
    alpha: np.ndarray,
    bias: np.ndarray,
    *,
    in_channels: int,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    wzero: Optional[np.ndarray] = None,
    return_int: bool = False,
):
    """Pure-numpy BinaryConv2d of the contract.

    Returns Y (dtype of x). With ``return_int`` also returns the exact integer
    dot products per tap, [N, O, KH, KW, H', W'] int32 (the part a kernel must
    reproduce bit for bit).
    """
    x = np.asarray(x)
    out_dtype = x.dtype
    xf = x.astype(np.float32)
    n, c, h, w = xf.shape
    if c != in_channels:
        raise ValueError(f"X has {c} channels, op expects in_channels={in_channels}")
    kh, kw = kernel_shape
    sh, sw = strides
    pt, pl, pb, pr = pads
    o = wbits.shape[0]
    sgn_w = unpack_weight_signs(wbits, c, wzero).astype(np.int32)  # O, KH, KW, C
    ho = conv_output_size(h, kh, sh, pt, pb)
    wo = conv_output_size(w, kw, sw, pl, pr)
    s = np.abs(xf).mean(axis=1)  # N, H, W
    sgn_x = np.sign(xf).astype(np.int32)
    sp = np.zeros((n, h + pt + pb, w + pl + pr), np.float32)
    sp[:, pt : pt + h, pl : pl + w] = s
    xp = np.zeros((n, c, h + pt + pb, w + pl + pr), np.int32)
    xp[:, :, pt : pt + h, pl : pl + w] = sgn_x
    dots = np.zeros((n, o, kh, kw, ho, wo), np.int32)
    y = np.zeros((n, o, ho, wo), np.float64)
    for i in range(kh):
        for j in range(kw):
            xs = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]  # N, C, Ho, Wo
            ss = sp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]  # N, Ho, Wo
            d = np.einsum("nchw,oc->nohw", xs, sgn_w[:, i, j, :], dtype=np.int64).astype(np.int32)
            dots[:, :, i, j] = d
            y += ss[:, None].astype(np.float64) * d
    y = bias.astype(np.float64)[None, :, None, None] + alpha.astype(np.float64)[None, :, None, None] * y
    y = y.astype(np.float32).astype(out_dtype)
    return (y, dots) if return_int else y


def side_branches_reference(
    x: np.ndarray,
    core: np.ndarray,
    *,
    conv: bool,
    rprelu: Optional[np.ndarray] = None,
    smb_rowptr: Optional[np.ndarray] = None,
    smb_col: Optional[np.ndarray] = None,
    smb_val: Optional[np.ndarray] = None,
    lr_down: Optional[np.ndarray] = None,
    lr_up: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The fused side branches on a core output, in float64 (then X's dtype).

    ``x``: the layer input ([N, C, H, W] or [..., K]); ``core``: the contract op's output
    (same pixel grid for conv: stride 1, same size, whenever SMB or LRMB is given);
    ``smb_rowptr`` / ``smb_col`` as :func:`smb_csr` writes them. Order as the module docstring.
    """
    out_dtype = core.dtype
    xf = np.asarray(x, np.float64)
    y = np.asarray(core, np.float64)
    axis = 1 if conv else xf.ndim - 1
    o = y.shape[axis]

    def per_channel(v: np.ndarray) -> np.ndarray:
        shape = [1] * y.ndim
        shape[axis] = -1
        return np.asarray(v, np.float64).reshape(shape)

    def smb() -> np.ndarray:
        rowptr = unpack_halves(smb_rowptr, o + 1)
        nnz = int(rowptr[-1])
        cols = unpack_halves(smb_col, nnz)
        vals = np.asarray(smb_val, np.float64)
        out = np.zeros_like(y)
        for oc in range(o):
            acc = 0.0
            for e in range(rowptr[oc], rowptr[oc + 1]):
                acc = acc + vals[e] * np.take(xf, cols[e], axis=axis)
            idx = [slice(None)] * y.ndim
            idx[axis] = oc
            out[tuple(idx)] = acc
        return out

    def lrmb() -> np.ndarray:
        down, up = np.asarray(lr_down, np.float64), np.asarray(lr_up, np.float64)
        t = np.tensordot(xf, down, axes=([axis], [1]))  # channel axis last: [..., r]
        low = np.tensordot(t, up, axes=([t.ndim - 1], [1]))  # [..., O]
        return np.moveaxis(low, low.ndim - 1, axis)

    if rprelu is not None:
        if not conv:
            raise ValueError("RPReLU belongs to conv layers")
        b0, slope, b1 = (per_channel(r) for r in np.asarray(rprelu))
        u = y + b0
        y = np.where(u > 0, u, slope * u) + b1
    if conv:
        if smb_rowptr is not None:
            y = y + smb()
        if lr_down is not None:
            y = y + lrmb()
    else:
        if lr_down is not None:
            y = y + lrmb()
        if smb_rowptr is not None:
            y = y + smb()
    return y.astype(np.float32).astype(out_dtype)


def binary_linear_reference(
    x: np.ndarray,
    wbits: np.ndarray,
    alpha: np.ndarray,
    bias: np.ndarray,
    *,
    in_features: int,
    wzero: Optional[np.ndarray] = None,
    return_int: bool = False,
):
    """Pure-numpy BinaryLinear of the contract: X [..., K] -> Y [..., O]."""
    x = np.asarray(x)
    out_dtype = x.dtype
    xf = x.astype(np.float32)
    if xf.shape[-1] != in_features:
        raise ValueError(f"X has last dimension {xf.shape[-1]}, op expects in_features={in_features}")
    sgn_w = unpack_weight_signs(wbits, in_features, wzero).astype(np.int64)  # O, K
    s = np.abs(xf).mean(axis=-1, keepdims=True)
    dot = np.sign(xf).astype(np.int64) @ sgn_w.T
    y = bias.astype(np.float64) + alpha.astype(np.float64) * s.astype(np.float64) * dot
    y = y.astype(np.float32).astype(out_dtype)
    return (y, dot.astype(np.int32)) if return_int else y
