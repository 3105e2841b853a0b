"""The ``bimaco`` binary ops as torch functions.

:func:`binary_conv2d` and :func:`binary_linear` call ``torch.ops.bimaco.*`` from the
native library built by :mod:`bimaco_deploy.plugins.native` (CPU kernels always, CUDA
kernels where built). When that library is missing (no compiler, not built yet) or has
no kernel for the tensor's device, they run a pure torch implementation of the same
contract and say so with a :class:`NativeOpsFallbackWarning`, once per reason.

Fake (meta) kernels are registered so the ops trace under ``torch.compile`` /
``torch.export`` with correct output shapes.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import BackendUnavailable, InputError
from . import contract, native

IntOrSeq = Union[int, Sequence[int]]


class NativeOpsFallbackWarning(RuntimeWarning):
    """The native kernels are unavailable; the slow pure-torch reference runs instead."""


_available: Optional[bool] = None
_load_error: str = ""
_fake_registered = False
_warned: Set[str] = set()


def _register_fakes() -> None:
    global _fake_registered
    if _fake_registered:
        return

    @torch.library.register_fake("bimaco::binary_conv2d")
    def _conv_fake(x, wbits, alpha, bias, stride, padding, in_channels, wzero=None):  # noqa: ANN001
        ho = contract.conv_output_size(x.shape[2], wbits.shape[1], stride[0], padding[0], padding[2])
        wo = contract.conv_output_size(x.shape[3], wbits.shape[2], stride[1], padding[1], padding[3])
        return x.new_empty((x.shape[0], wbits.shape[0], ho, wo))

    @torch.library.register_fake("bimaco::binary_linear")
    def _linear_fake(x, wbits, alpha, bias, in_features, wzero=None):  # noqa: ANN001
        return x.new_empty((*x.shape[:-1], wbits.shape[0]))

    @torch.library.register_fake("bimaco::binary_conv2d_fused")
    def _conv_fused_fake(x, wbits, alpha, bias, stride, padding, in_channels, wzero=None, *side):  # noqa: ANN001
        return _conv_fake(x, wbits, alpha, bias, stride, padding, in_channels, wzero)

    @torch.library.register_fake("bimaco::binary_linear_fused")
    def _linear_fused_fake(x, wbits, alpha, bias, in_features, wzero=None, *side):  # noqa: ANN001
        return _linear_fake(x, wbits, alpha, bias, in_features, wzero)

    _fake_registered = True


def ops_available() -> bool:
    """True when the native ``bimaco`` ops are loaded (building is not attempted here)."""
    global _available, _load_error
    if _available is None:
        try:
            native.load_libraries()
            ok = hasattr(torch.ops.bimaco, "binary_conv2d") and "cpu" in native.load_libraries()
            if not ok:
                _load_error = (
                    f"{native.CPU_LIB_NAME} is not built in {native.build_dir()} "
                    "(run `python -m bimaco_deploy.plugins.native build`)"
                )
        except (BackendUnavailable, AttributeError, RuntimeError) as err:
            ok, _load_error = False, str(err)
        if ok:
            _register_fakes()
            _apply_isa_from_environment()  # raises on a bad value: every later call raises too
        _available = ok
    return bool(_available)


#: Environment variable that forces the CPU kernels onto one instruction set for the whole
#: process (e.g. ``avx2`` or ``scalar`` on an AVX-512 machine), to test every ISA from one machine.
ISA_ENV = "BIMACO_CPU_ISA"


def _apply_isa_from_environment() -> None:
    import os

    wanted = os.environ.get(ISA_ENV, "").strip()
    if wanted and wanted != "auto" and not torch.ops.bimaco.cpu_set_isa(wanted):
        available = tuple(s for s in str(torch.ops.bimaco.cpu_available_isas()).split(",") if s)
        raise BackendUnavailable(f"${ISA_ENV}={wanted!r} is not available on this CPU; available: {', '.join(available)}")


def cuda_ops_available() -> bool:
    """True when the CUDA kernels of the ops are loaded too."""
    return ops_available() and "cuda" in native.load_libraries()


def unavailable_reason() -> str:
    """Why :func:`ops_available` is False ('' when it is True)."""
    ops_available()
    return _load_error


def cpu_isa() -> Optional[str]:
    """Instruction set the native CPU kernels use now (None without the native library)."""
    return str(torch.ops.bimaco.cpu_isa()) if ops_available() else None


def cpu_available_isas() -> Tuple[str, ...]:
    """Instruction sets built into the library that this CPU can run, slowest first."""
    if not ops_available():
        return ()
    return tuple(s for s in str(torch.ops.bimaco.cpu_available_isas()).split(",") if s)


def set_cpu_isa(name: str) -> None:
    """Force the CPU kernels onto one instruction set ("auto" restores the automatic choice)."""
    if not ops_available():
        raise BackendUnavailable(f"native ops unavailable: {unavailable_reason()}")
    if not torch.ops.bimaco.cpu_set_isa(name):
        raise BackendUnavailable(f"CPU ISA {name!r} is not available here; available: {cpu_available_isas()}")


def _warn_fallback(reason: str) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(
        f"bimaco native ops unavailable ({reason}); using the pure-torch reference implementation "
        "of the op contract, which is correct but slow",
        NativeOpsFallbackWarning,
        stacklevel=3,
    )


def _use_native(x: torch.Tensor) -> bool:
    if not ops_available():
        _warn_fallback(_load_error or "native library not loaded")
        return False
    if x.device.type == "cpu":
        return True
    if x.device.type == "cuda" and cuda_ops_available():
        return True
    _warn_fallback(f"no native kernel for device {x.device.type}")
    return False


# --------------------------------------------------------------------------- argument handling


def _pair(v: IntOrSeq, what: str) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise InputError(f"{what} must be an int or 2 ints, got {v!r}")
    return t  # type: ignore[return-value]


def _pads(v: IntOrSeq) -> Tuple[int, int, int, int]:
    """int, (pad_h, pad_w) or ONNX order (top, left, bottom, right)."""
    if isinstance(v, int):
        return (v, v, v, v)
    t = tuple(int(a) for a in v)
    if len(t) == 2:
        return (t[0], t[1], t[0], t[1])
    if len(t) != 4:
        raise InputError(f"padding must be an int, 2 ints or 4 ints (top, left, bottom, right), got {v!r}")
    return t  # type: ignore[return-value]


def _check_params(
    op: str,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    wzero: Optional[torch.Tensor],
    channels: int,
    ndim: int,
) -> None:
    if wbits.dtype != torch.int32 or wbits.dim() != ndim:
        raise InputError(f"{op}: wbits must be int32 with {ndim} dims, got {wbits.dtype} {tuple(wbits.shape)}")
    need = contract.num_words(channels)
    if wbits.shape[-1] != need:
        raise InputError(f"{op}: wbits last dim {wbits.shape[-1]} cannot hold {channels} channels (need {need} words)")
    o = wbits.shape[0]
    for name, t in (("alpha", alpha), ("bias", bias)):
        if t.dtype != torch.float32 or tuple(t.shape) != (o,):
            raise InputError(f"{op}: {name} must be float32 [{o}], got {t.dtype} {tuple(t.shape)}")
    if wzero is not None and (wzero.dtype != torch.int32 or wzero.shape != wbits.shape):
        raise InputError(
            f"{op}: wzero must be int32 of shape {tuple(wbits.shape)}, got {wzero.dtype} {tuple(wzero.shape)}"
        )


def _conv_args(
    op: str,
    x: torch.Tensor,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    stride: IntOrSeq,
    padding: IntOrSeq,
    in_channels: Optional[int],
    wzero: Optional[torch.Tensor],
) -> Tuple[Tuple[int, int], Tuple[int, int, int, int], int]:
    """Validated (stride, ONNX-order pads, in_channels) of a conv call; InputError names what is wrong."""
    if x.dim() != 4 or x.dtype not in (torch.float32, torch.float16):
        raise InputError(f"{op}: x must be float32/float16 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    c = int(x.shape[1]) if in_channels is None else int(in_channels)
    if x.shape[1] != c:
        raise InputError(f"{op}: x has {x.shape[1]} channels, layer expects in_channels={c}")
    _check_params(op, wbits, alpha, bias, wzero, c, 4)
    st, pads = _pair(stride, "stride"), _pads(padding)
    if min(st) <= 0 or min(pads) < 0:
        raise InputError(f"{op}: stride {st} must be positive and padding {pads} non-negative")
    try:
        contract.conv_output_size(x.shape[2], wbits.shape[1], st[0], pads[0], pads[2])
        contract.conv_output_size(x.shape[3], wbits.shape[2], st[1], pads[1], pads[3])
    except ValueError as err:
        raise InputError(f"{op}: x {tuple(x.shape)}: {err}") from err
    return st, pads, c


def _linear_args(
    op: str,
    x: torch.Tensor,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    in_features: Optional[int],
    wzero: Optional[torch.Tensor],
) -> int:
    """Validated in_features of a linear call."""
    if x.dim() < 1 or x.dtype not in (torch.float32, torch.float16):
        raise InputError(f"{op}: x must be float32/float16 [..., K], got {x.dtype} {tuple(x.shape)}")
    k = int(x.shape[-1]) if in_features is None else int(in_features)
    if x.shape[-1] != k:
        raise InputError(f"{op}: x has last dim {x.shape[-1]}, layer expects in_features={k}")
    _check_params(op, wbits, alpha, bias, wzero, k, 2)
    return k


# --------------------------------------------------------------------------- public ops


def binary_conv2d(
    x: torch.Tensor,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    stride: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    in_channels: Optional[int] = None,
    wzero: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """BinaryConv2d of the op contract: x [N, C, H, W] (fp32/fp16) -> y [N, O, H', W'] in x's dtype.

    ``wbits`` int32 [O, KH, KW, ceil(C/32)], ``alpha``/``bias`` float32 [O], ``padding`` an
    int, (pad_h, pad_w) or ONNX (top, left, bottom, right); ``wzero`` the optional weight
    zero mask in the layout of ``wbits``.
    """
    st, pads, c = _conv_args("binary_conv2d", x, wbits, alpha, bias, stride, padding, in_channels, wzero)
    if _use_native(x):
        return torch.ops.bimaco.binary_conv2d(x, wbits, alpha, bias, list(st), list(pads), c, wzero)
    return reference_binary_conv2d(x, wbits, alpha, bias, st, pads, c, wzero)


def binary_linear(
    x: torch.Tensor,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    in_features: Optional[int] = None,
    wzero: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """BinaryLinear of the op contract: x [..., K] (fp32/fp16) -> y [..., O] in x's dtype."""
    k = _linear_args("binary_linear", x, wbits, alpha, bias, in_features, wzero)
    if _use_native(x):
        return torch.ops.bimaco.binary_linear(x, wbits, alpha, bias, k, wzero)
    return reference_binary_linear(x, wbits, alpha, bias, k, wzero)


# --------------------------------------------------------------------------- fused layers


class SideBranches(NamedTuple):
    """The full-precision side branches of one BiMaCoSR binary layer, in op form.

    ``rprelu`` float32 [3, O] (rows b0, slope, b1; conv layers only); SMB as CSR over
    output channels: ``smb_rowptr`` int32 [O + 1], ``smb_col`` int16 [nnz] (input
    channel), ``smb_val`` float32 [nnz]; LRMB as ``lr_down`` float32 [r, C] (applied
    first) and ``lr_up`` float32 [O, r]. Any of them may be None.
    """

    rprelu: Optional[torch.Tensor] = None
    smb_rowptr: Optional[torch.Tensor] = None
    smb_col: Optional[torch.Tensor] = None
    smb_val: Optional[torch.Tensor] = None
    lr_down: Optional[torch.Tensor] = None
    lr_up: Optional[torch.Tensor] = None


def fused_native(x: torch.Tensor) -> bool:
    """Whether the native fused layer kernels take ``x`` (CPU tensors with the library loaded).

    Elsewhere the contract op runs and the side branches follow as torch ops.
    """
    return x.device.type == "cpu" and (_available if _available is not None else ops_available())


def binary_conv2d_fused(
    x: torch.Tensor,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    stride: IntOrSeq,
    padding: IntOrSeq,
    in_channels: int,
    wzero: Optional[torch.Tensor],
    side: SideBranches,
) -> torch.Tensor:
    """A whole binary conv layer: ``((RPReLU(BinaryConv2d(x)) + SMB(x)) + LRMB(x))``.

    On CPU with the native library, one kernel applies the side branches in the GEMM
    epilogue; elsewhere the contract op (native or reference) runs and the side branches
    follow as torch ops (:func:`reference_side_conv`), with the same order of additions.
    """
    if fused_native(x):
        st, pads, c = _conv_args("binary_conv2d_fused", x, wbits, alpha, bias, stride, padding, in_channels, wzero)
        return torch.ops.bimaco.binary_conv2d_fused(x, wbits, alpha, bias, list(st), list(pads), c, wzero, *side)
    y = binary_conv2d(x, wbits, alpha, bias, stride, padding, in_channels, wzero)
    return reference_side_conv(x, y, side)


def binary_linear_fused(
    x: torch.Tensor,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    in_features: int,
    wzero: Optional[torch.Tensor],
    side: SideBranches,
) -> torch.Tensor:
    """A whole binary linear layer: ``((BinaryLinear(x) + LRMB(x)) + SMB(x))`` (see the conv twin)."""
    if side.rprelu is not None:
        raise InputError("binary_linear_fused: RPReLU belongs to conv layers")
    if fused_native(x):
        k = _linear_args("binary_linear_fused", x, wbits, alpha, bias, in_features, wzero)
        return torch.ops.bimaco.binary_linear_fused(x, wbits, alpha, bias, k, wzero, *side[1:])
    y = binary_linear(x, wbits, alpha, bias, in_features, wzero)
    return reference_side_linear(x, y, side)


def smb_apply(x: torch.Tensor, rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, dim: int) -> torch.Tensor:
    """SMB from its CSR table: ``out[.., o, ..] = sum val * x[.., col, ..]`` along ``dim``.

    Gather/scatter (the reference's index_select/index_add_ form): never a dense matrix.
    """
    counts = (rowptr[1:] - rowptr[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(counts.numel(), device=x.device), counts)
    shape = [1] * x.dim()
    shape[dim] = -1
    gathered = x.index_select(dim, col.long()) * val.to(x.dtype).view(shape)
    out_shape = list(x.shape)
    out_shape[dim] = counts.numel()
    return x.new_zeros(out_shape).index_add_(dim, rows, gathered)


def reference_side_conv(x: torch.Tensor, y: torch.Tensor, side: SideBranches) -> torch.Tensor:
    """Side branches of a conv layer in torch ops, on the binary branch's output ``y``."""
    if side.rprelu is not None:
        b0, slope, b1 = (r.to(y.dtype) for r in side.rprelu)
        y = F.prelu(y + b0.view(1, -1, 1, 1), slope) + b1.view(1, -1, 1, 1)
    if side.smb_rowptr is not None:
        y = y + smb_apply(x, side.smb_rowptr, side.smb_col, side.smb_val, dim=1)
    if side.lr_down is not None:
        n, c, h, w = x.shape
        low = torch.matmul(side.lr_up.to(x.dtype), torch.matmul(side.lr_down.to(x.dtype), x.reshape(n, c, h * w)))
        y = y + low.view(n, -1, h, w)
    return y


def reference_side_linear(x: torch.Tensor, y: torch.Tensor, side: SideBranches) -> torch.Tensor:
    """Side branches of a linear layer in torch ops, on the binary branch's output ``y``."""
    if side.lr_down is not None:
        y = y + F.linear(F.linear(x, side.lr_down.to(x.dtype)), side.lr_up.to(x.dtype))
    if side.smb_rowptr is not None:
        y = y + smb_apply(x, side.smb_rowptr, side.smb_col, side.smb_val, dim=x.dim() - 1)
    return y


# --------------------------------------------------------------------------- pure torch reference


def unpack_signs(wbits: torch.Tensor, channels: int, wzero: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 signs (+1/-1/0) with the channel axis last, from packed words (and zero mask)."""
    shifts = torch.arange(contract.WORD_BITS, device=wbits.device, dtype=torch.int32)
    neg = ((wbits.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :channels].bool()
    signs = 1.0 - 2.0 * neg.float()
    if wzero is not None:
        zero = ((wzero.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :channels].bool()
        signs = signs.masked_fill(zero, 0.0)
    return signs


def reference_binary_conv2d(
    x: torch.Tensor,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    stride: Tuple[int, int],
    pads: Tuple[int, int, int, int],
    in_channels: int,
    wzero: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The contract in standard torch ops: conv2d of sgn(x)*s (s = mean|x| per pixel) with sgn(W)."""
    xf = x.float()
    xs = torch.sign(xf) * xf.abs().mean(dim=1, keepdim=True)
    w = unpack_signs(wbits, in_channels, wzero).permute(0, 3, 1, 2).contiguous()
    pt, pl, pb, pr = pads
    y = F.conv2d(F.pad(xs, (pl, pr, pt, pb)), w, stride=stride)
    y = y * alpha.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    return y.to(x.dtype)


def reference_binary_linear(
    x: torch.Tensor,
    wbits: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    in_features: int,
    wzero: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The contract in standard torch ops: (sgn(x) @ sgn(W)^T) * s * alpha + bias."""
    xf = x.float()
    s = xf.abs().mean(dim=-1, keepdim=True)
    dot = torch.sign(xf) @ unpack_signs(wbits, in_features, wzero).t()
    return (bias + alpha * s * dot).to(x.dtype)
