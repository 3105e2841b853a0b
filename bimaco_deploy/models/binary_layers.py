"""BiMaCoSR's binary layers, as float reference maths (the ground truth every backend matches).

A binary layer is three branches added together:

* BMB, the binary matrix branch: 1-bit weights (alpha[o] * sign(W)) applied to 1-bit
  activations (s * sign(x), s = mean |x| over channels per pixel, or per row/token);
* LRMB, a rank-r low-rank branch on the raw input (two bias-free 1x1 maps);
* SMB, a sparse branch on the raw input (2*max(Cin, Cout) full-precision weights).

Convolutions add RPReLU after the BMB and pick their shortcut per layer: a strided
layer with Cin == Cout uses a 2x2 average pool and neither SMB nor LRMB.

Module and parameter names mirror the original checkpoint keys, so a state dict
loads without renaming. The maths follows spec section c, including the
straight-through expression ``(b - clamp(W)) + clamp(W)`` that the original uses to
form the binary weight (it can differ from ``alpha*sign(W)`` by one ulp).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..plugins.contract import PackedWeight, pack_weight


class LearnableBias(nn.Module):
    """A per-channel bias stored as [1, C] (the original's shape), broadcast over NCHW or [N, C]."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x + self.bias.unsqueeze(2).unsqueeze(3)
        return x + self.bias


class RPReLU(nn.Module):
    """PReLU(x + b0) + b1 with per-channel slopes."""

    def __init__(self, channels: int):
        super().__init__()
        self.pr_bias0 = LearnableBias(channels)
        self.pr_prelu = nn.PReLU(channels)
        self.pr_bias1 = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pr_bias1(self.pr_prelu(self.pr_bias0(x)))


class SparseBranch(nn.Module):
    """SMB: a sparse Cout x Cin matrix as (values, float coordinates), applied to the raw input.

    ``indices_float`` row 0 is the output channel, row 1 the input channel. EMA
    checkpoints store them as drifted floats; they are rounded to nearest, never
    truncated. Duplicate coordinates add up (as the original's coalesce does).
    """

    def __init__(self, in_features: int, out_features: int, nnz: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.values = nn.Parameter(torch.zeros(nnz))
        self.register_buffer("indices_float", torch.zeros(2, nnz))

    def indices(self) -> torch.Tensor:
        """Rounded int64 coordinates [2, nnz]."""
        return torch.round(self.indices_float).long()

    def dense(self) -> torch.Tensor:
        """The equivalent dense matrix (for tests and inspection only; never used by a backend)."""
        idx = self.indices()
        m = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype)
        m.index_put_((idx[0], idx[1]), self.values.detach(), accumulate=True)
        return m

    def forward(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        idx = self.indices()
        gathered = x.index_select(channel_dim, idx[1])
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        gathered = gathered * self.values.view(shape)
        out_shape = list(x.shape)
        out_shape[channel_dim] = self.out_features
        out = x.new_zeros(out_shape)
        return out.index_add_(channel_dim, idx[0], gathered)


class ConvLowRank(nn.Module):
    """Conv LRMB: 1x1 map A (Cin -> r) then B (r -> Cout), no bias."""

    def __init__(self, in_channels: int, out_channels: int, rank: int):
        super().__init__()
        self.A = nn.Conv2d(in_channels, rank, 1, bias=False)
        self.B = nn.Conv2d(rank, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))


class LinearLowRank(nn.Module):
    """Linear LRMB: B (In -> r) first, then A (r -> Out): the original's naming is swapped w.r.t. convs."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.B = nn.Linear(in_features, rank, bias=False)
        self.A = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(self.B(x))


def binarize_activation(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """s * sign(x) with s = mean |x| over ``channel_dim`` (sign(0) = 0, as torch.sign)."""
    return x.abs().mean(dim=channel_dim, keepdim=True) * torch.sign(x)


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    """alpha[o] * sign(W) formed exactly like the original: (b - clamp(W, -1, 1)) + clamp(W, -1, 1)."""
    dims = list(range(1, w.dim()))
    b = w.abs().mean(dim=dims, keepdim=True) * torch.sign(w)
    c = torch.clamp(w, -1.0, 1.0)
    return (b - c) + c


class BinaryConv2d(nn.Module):
    """BiMaCoSR binary convolution (``BinaryConv2d_ours`` with SMB and LRMB)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        rank: int,
        use_smb: bool = True,
        use_lrmb: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.relu = RPReLU(out_channels)
        # The original decides the shortcut at run time by comparing heights; for a
        # conv that can only shrink the input, that is: strided and Cin == Cout.
        self.uses_avgpool_shortcut = stride > 1 and in_channels == out_channels
        self.has_smb = use_smb and not self.uses_avgpool_shortcut
        self.has_lrmb = use_lrmb and stride == 1
        self.rank = rank
        if self.has_smb:
            self.skip_connection = SparseBranch(in_channels, out_channels, 2 * max(in_channels, out_channels))
        if self.has_lrmb:
            self.lora = ConvLowRank(in_channels, out_channels, rank)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, smb={self.has_smb}, lrmb={self.has_lrmb}, avgpool={self.uses_avgpool_shortcut}"
        )

    @property
    def pads(self) -> Tuple[int, int, int, int]:
        """Padding in ONNX order (top, left, bottom, right)."""
        p = self.padding
        return (p, p, p, p)

    def binary_branch(self, x: torch.Tensor) -> torch.Tensor:
        """conv(s*sign(x), alpha*sign(W)) + bias: the part the custom op replaces."""
        xb = binarize_activation(x, 1)
        return F.conv2d(xb, binarize_weight(self.weight), self.bias, stride=self.stride, padding=self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.binary_branch(x))
        if self.uses_avgpool_shortcut:
            y = y + F.avg_pool2d(x, kernel_size=self.stride, stride=self.stride)
        elif self.has_smb:
            y = y + self.skip_connection(x, channel_dim=1)
        if self.has_lrmb:
            y = y + self.lora(x)
        return y

    def packed(self) -> PackedWeight:
        """The weight in op-contract form (sign bits, alpha, optional zero mask)."""
        return pack_weight(self.weight.detach().cpu().numpy())


class BinaryLinear(nn.Module):
    """BiMaCoSR binary linear layer (``BinaryLinear_ours`` with SMB and LRMB); no RPReLU."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, use_smb: bool = True, use_lrmb: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.has_smb = use_smb
        self.has_lrmb = use_lrmb
        self.rank = min(rank, in_features, out_features)
        if use_smb:
            self.skip_connection = SparseBranch(in_features, out_features, 2 * max(in_features, out_features))
        if use_lrmb:
            self.lora = LinearLowRank(in_features, out_features, self.rank)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, smb={self.has_smb}, lrmb={self.has_lrmb}"

    def binary_branch(self, x: torch.Tensor) -> torch.Tensor:
        """linear(s*sign(x), alpha*sign(W)) + bias."""
        return F.linear(binarize_activation(x, -1), binarize_weight(self.weight), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.binary_branch(x)
        if self.has_lrmb:
            y = y + self.lora(x)
        if self.has_smb:
            y = y + self.skip_connection(x, channel_dim=-1)
        return y

    def packed(self) -> PackedWeight:
        """The weight in op-contract form."""
        return pack_weight(self.weight.detach().cpu().numpy())


BINARY_TYPES = (BinaryConv2d, BinaryLinear)


# --------------------------------------------------------------------------- initialisation


def _top_k_sparse(m: torch.Tensor, nnz: int) -> Tuple[torch.Tensor, torch.Tensor]:
    flat = m.reshape(-1)
    _, idx = torch.topk(flat.abs(), nnz, largest=True, sorted=False)
    cols = m.shape[1]
    return torch.stack([idx // cols, idx % cols]).float(), flat[idx].clone()


@torch.no_grad()
def init_from_float(layer: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Fill a binary layer from a float layer's weights the way the original's replacement does.

    SMB takes the 2*max(Cin, Cout) largest magnitudes (of the spatial mean for convs),
    LRMB the top-r SVD of what remains; both are subtracted from the latent weight
    (the centre tap for 3x3 convs). Used to build realistic random-init models.
    """
    w = weight.detach().clone().float()
    if bias is not None:
        layer.bias.copy_(bias)
    if isinstance(layer, BinaryConv2d):
        pad = layer.kernel_size // 2
        centre = (slice(None), slice(None), pad, pad)
        if layer.has_smb:
            ind, val = _top_k_sparse(w.mean(dim=(2, 3)), layer.skip_connection.values.numel())
            layer.skip_connection.indices_float.copy_(ind)
            layer.skip_connection.values.copy_(val)
            w[centre] -= layer.skip_connection.dense()
        if layer.has_lrmb:
            u, s, vh = torch.linalg.svd(w.mean(dim=(2, 3)).t(), full_matrices=False)  # [Cin, Cout]
            r = layer.rank
            a = (u[:, :r] * s[:r].sqrt()).t()  # [r, Cin]
            b = (s[:r].sqrt()[:, None] * vh[:r]).t()  # [Cout, r]
            layer.lora.A.weight.copy_(a[:, :, None, None])
            layer.lora.B.weight.copy_(b[:, :, None, None])
            w[centre] -= b @ a
    else:
        if layer.has_smb:
            ind, val = _top_k_sparse(w, layer.skip_connection.values.numel())
            layer.skip_connection.indices_float.copy_(ind)
            layer.skip_connection.values.copy_(val)
            w -= layer.skip_connection.dense()
        if layer.has_lrmb:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            r = layer.rank
            layer.lora.A.weight.copy_(u[:, :r] * s[:r].sqrt())
            layer.lora.B.weight.copy_(s[:r].sqrt()[:, None] * vh[:r])
            w -= layer.lora.A.weight @ layer.lora.B.weight
    layer.weight.copy_(w)


def count_scattered_zero_weights(layer: nn.Module) -> int:
    """Exact-zero latent weights in output channels that are not entirely zero (they need a zero mask)."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    nonzero_rows = (w != 0).any(dim=1)
    return int(((w == 0) & nonzero_rows[:, None]).sum())


def smb_row_counts(layer: nn.Module) -> np.ndarray:
    """Nonzeros per output row of a layer's SMB (after rounding coordinates)."""
    idx = layer.skip_connection.indices()[0].numpy()
    n_out = layer.skip_connection.out_features
    return np.bincount(idx, minlength=n_out)
