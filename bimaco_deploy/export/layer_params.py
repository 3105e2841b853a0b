"""Export-ready parameters of one binary layer, read from a state dict.

A binary layer of the checkpoint (``BinaryConv2d_ours`` / ``BinaryLinear_ours``)
becomes: the packed 1-bit core (sign bits, alpha, bias, optional zero mask,
following :mod:`bimaco_deploy.plugins.contract`), the RPReLU parameters (convs),
the shortcut (2x2 average pool for strided same-width convs, otherwise the
sparse SMB in compact per-row form) and the LRMB factors. Dead entries
(``move0.bias``, ``channel_threshold``, the SMB/LRMB of strided layers) are
marked consumed but not exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from ..errors import CheckpointError
from ..plugins import contract


class StateReader:
    """Reads tensors out of a state dict and remembers which keys were used.

    After the whole model is walked, :meth:`check_all_used` turns any key that
    no layer consumed into a :class:`CheckpointError`: an unknown key pattern
    means the checkpoint holds a layer type this exporter does not understand.
    """

    def __init__(self, state: Mapping[str, np.ndarray], source: str = "checkpoint"):
        self.state = {k: np.asarray(v) for k, v in state.items()}
        self.source = source
        self.used: Set[str] = set()
        self.dead: Set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str, shape: Optional[Sequence[int]] = None) -> np.ndarray:
        """The tensor under ``key``; with ``shape``, checked to have exactly that shape."""
        if key not in self.state:
            raise CheckpointError(f"{self.source}: missing key '{key}' (expected by the config's architecture)")
        value = self.state[key]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.source}: '{key}' has shape {list(value.shape)}, the config's architecture expects {list(shape)}"
            )
        self.used.add(key)
        return value

    def take_optional(self, key: str, shape: Optional[Sequence[int]] = None) -> Optional[np.ndarray]:
        return self.take(key, shape) if key in self.state else None

    def drop(self, key: str) -> None:
        """Mark a key as known but unused by the forward (dead entry)."""
        if key in self.state:
            self.used.add(key)
            self.dead.add(key)

    def drop_prefix(self, prefix: str) -> None:
        for k in self.state:
            if k.startswith(prefix):
                self.drop(k)

    def unused(self) -> List[str]:
        return sorted(k for k in self.state if k not in self.used)

    def check_all_used(self) -> None:
        left = self.unused()
        if left:
            shown = ", ".join(f"'{k}' {list(self.state[k].shape)}" for k in left[:8])
            more = f" and {len(left) - 8} more" if len(left) > 8 else ""
            raise CheckpointError(
                f"{self.source}: {len(left)} key(s) match no layer of the architecture built from the config "
                f"(unknown layer type or config/checkpoint mismatch): {shown}{more}"
            )


@dataclass
class SparseRows:
    """The SMB in compact row-sorted form (CSR without the dense matrix).

    ``cols[k]`` and ``values[k]`` are the k-th nonzero, grouped by output row
    in the checkpoint's order; ``counts[o]`` is how many belong to row ``o``.
    At run time the graph turns this into a per-row table padded to the
    longest row (``row_width``, about 20 in the published model) and does one
    Gather + Mul + ReduceSum: never a dense Cout x Cin matrix.
    """

    cols: np.ndarray  # int64 [nnz]
    values: np.ndarray  # float32 [nnz]
    counts: np.ndarray  # int64 [O]

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.counts.shape[0])

    @property
    def row_width(self) -> int:
        return max(int(self.counts.max()) if self.counts.size else 0, 1)

    def padded(self) -> Tuple[np.ndarray, np.ndarray]:
        """(index [O, R], value [O, R]) with rows padded by index 0 / value 0."""
        o, r = self.out_features, self.row_width
        index = np.zeros((o, r), np.int64)
        value = np.zeros((o, r), np.float32)
        start = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        for row in range(o):
            n = int(self.counts[row])
            index[row, :n] = self.cols[start[row] : start[row] + n]
            value[row, :n] = self.values[start[row] : start[row] + n]
        return index, value

    def dense(self, in_features: int) -> np.ndarray:
        """Dense [O, in] matrix (tests and references only)."""
        index, value = self.padded()
        out = np.zeros((self.out_features, in_features), np.float64)
        for o in range(self.out_features):
            for c, v in zip(index[o], value[o]):
                out[o, c] += v
        return out

    @classmethod
    def from_coo(
        cls, values: np.ndarray, indices_float: np.ndarray, out_features: int, in_features: int, where: str
    ) -> "SparseRows":
        """Build from the checkpoint's (values [nnz], indices_float [2, nnz]) pair.

        Indices are floats (EMA checkpoints drift off integers) and are rounded
        to nearest, as the original does with ``torch.round(...).long()``.
        """
        values = np.asarray(values, np.float32).reshape(-1)
        idx = np.asarray(indices_float, np.float64)
        if idx.ndim != 2 or idx.shape[0] != 2 or idx.shape[1] != values.shape[0]:
            raise CheckpointError(
                f"{where}: skip_connection.indices_float has shape {list(idx.shape)}, expected [2, {values.shape[0]}]"
            )
        rows = np.rint(idx[0]).astype(np.int64)
        cols = np.rint(idx[1]).astype(np.int64)
        bad = (rows < 0) | (rows >= out_features) | (cols < 0) | (cols >= in_features)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise CheckpointError(
                f"{where}: SMB entry {k} points at ({rows[k]}, {cols[k]}), outside the {out_features} x {in_features} weight"
            )
        # stable sort keeps the checkpoint's order inside a row: a reproducible summation order
        order = np.argsort(rows, kind="stable")
        return cls(
            cols=cols[order], values=values[order], counts=np.bincount(rows, minlength=out_features).astype(np.int64)
        )


@dataclass
class BinaryConvLayer:
    """A binary 2-D convolution ready to export."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    packed: contract.PackedWeight
    bias: np.ndarray  # [O]
    rprelu: Tuple[np.ndarray, np.ndarray, np.ndarray]  # b0 [O], slope [O], b1 [O]
    avgpool_shortcut: bool
    smb: Optional[SparseRows]
    lrmb: Optional[Tuple[np.ndarray, np.ndarray]]  # A [r, C, 1, 1], B [O, r, 1, 1]
    latent_weight_count: int

    kind = "conv"

    @property
    def pads(self) -> Tuple[int, int, int, int]:
        p = self.padding
        return (p, p, p, p)


@dataclass
class BinaryLinearLayer:
    """A binary linear layer ready to export."""

    name: str
    in_features: int
    out_features: int
    packed: contract.PackedWeight
    bias: np.ndarray  # [O]
    smb: Optional[SparseRows]
    lrmb: Optional[Tuple[np.ndarray, np.ndarray]]  # down [r, K] (lora.B), up [O, r] (lora.A)
    latent_weight_count: int

    kind = "linear"

    @property
    def in_channels(self) -> int:
        return self.in_features

    @property
    def out_channels(self) -> int:
        return self.out_features


def read_binary_conv(
    reader: StateReader, prefix: str, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int
) -> BinaryConvLayer:
    """Read the binary conv at ``prefix`` (e.g. ``input_blocks.1.0.in_layers.2``) from the state."""
    p = prefix + "."
    if stride > 1 and in_channels != out_channels:
        # the original adds SMB(x) at the input resolution here, which cannot broadcast: no such layer exists
        raise CheckpointError(
            f"{prefix}: a strided binary conv must keep its width (got {in_channels} -> {out_channels}, stride {stride})"
        )
    weight = reader.take(p + "weight", (out_channels, in_channels, kernel, kernel)).astype(np.float32)
    bias = reader.take(p + "bias", (out_channels,)).astype(np.float32)
    b0 = reader.take(p + "relu.pr_bias0.bias", (1, out_channels)).reshape(-1).astype(np.float32)
    slope = reader.take(p + "relu.pr_prelu.weight", (out_channels,)).astype(np.float32)
    b1 = reader.take(p + "relu.pr_bias1.bias", (1, out_channels)).reshape(-1).astype(np.float32)
    reader.drop(p + "move0.bias")
    # the original picks the average-pool shortcut when Cin == Cout and the output is smaller
    avgpool = stride > 1 and in_channels == out_channels
    smb = lrmb = None
    if avgpool:
        reader.drop_prefix(p + "skip_connection.")
        reader.drop_prefix(p + "lora.")
    else:
        if reader.has(p + "skip_connection.values"):
            values = reader.take(p + "skip_connection.values")
            idx = reader.take(p + "skip_connection.indices_float")
            smb = SparseRows.from_coo(values, idx, out_channels, in_channels, prefix)
        if reader.has(p + "lora.A.weight"):
            a = reader.take(p + "lora.A.weight").astype(np.float32)
            r = a.shape[0]
            if a.shape != (r, in_channels, 1, 1):
                raise CheckpointError(f"{prefix}.lora.A.weight has shape {list(a.shape)}, expected [r, {in_channels}, 1, 1]")
            b = reader.take(p + "lora.B.weight", (out_channels, r, 1, 1)).astype(np.float32)
            lrmb = (a, b)
    return BinaryConvLayer(
        name=prefix,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel=kernel,
        stride=stride,
        padding=padding,
        packed=contract.pack_weight(weight),
        bias=bias,
        rprelu=(b0, slope, b1),
        avgpool_shortcut=avgpool,
        smb=smb,
        lrmb=lrmb,
        latent_weight_count=int(weight.size),
    )


def read_binary_linear(reader: StateReader, prefix: str, in_features: int, out_features: int) -> BinaryLinearLayer:
    """Read the binary linear at ``prefix`` (e.g. ``time_embed.0``) from the state."""
    p = prefix + "."
    weight = reader.take(p + "weight", (out_features, in_features)).astype(np.float32)
    bias = reader.take(p + "bias", (out_features,)).astype(np.float32)
    reader.drop(p + "channel_threshold")
    smb = lrmb = None
    if reader.has(p + "skip_connection.values"):
        values = reader.take(p + "skip_connection.values")
        idx = reader.take(p + "skip_connection.indices_float")
        smb = SparseRows.from_coo(values, idx, out_features, in_features, prefix)
    if reader.has(p + "lora.B.weight"):
        down = reader.take(p + "lora.B.weight").astype(np.float32)
        r = down.shape[0]
        if down.shape != (r, in_features):
            raise CheckpointError(f"{prefix}.lora.B.weight has shape {list(down.shape)}, expected [r, {in_features}]")
        up = reader.take(p + "lora.A.weight", (out_features, r)).astype(np.float32)
        lrmb = (down, up)
    return BinaryLinearLayer(
        name=prefix,
        in_features=in_features,
        out_features=out_features,
        packed=contract.pack_weight(weight),
        bias=bias,
        smb=smb,
        lrmb=lrmb,
        latent_weight_count=int(weight.size),
    )


def state_to_numpy(state: Mapping[str, object]) -> Dict[str, np.ndarray]:
    """A torch state dict (or anything array-like) as float/int numpy arrays."""
    out: Dict[str, np.ndarray] = {}
    for k, v in state.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()  # type: ignore[union-attr]
        out[k] = np.asarray(v)
    return out
