"""The ``torch`` backend: the reference UNet with every binary layer running on 1-bit weights.

:func:`pack_unet` converts a loaded reference model in memory. Each ``BinaryConv2d`` /
``BinaryLinear`` becomes a module that holds only what inference needs:

* the binary branch in op-contract form: int32 sign words (32 weights per word), alpha,
  bias and, only if scattered exact-zero weights exist, the zero mask;
* RPReLU as one [3, O] table (b0, slope, b1);
* LRMB as its two small factors (rank r);
* SMB as a CSR table of its ``nnz`` values (int16 input-channel indices), never a dense
  Cout x Cin matrix;
* the stride-2 same-width layers keep their average-pool shortcut and carry no SMB/LRMB.

A layer runs as one ``torch.ops.bimaco.binary_*_fused`` call on CPU: the XNOR-popcount
GEMM with RPReLU, SMB and LRMB applied in its epilogue, tile by tile while the outputs
are in cache (see :mod:`bimaco_deploy.plugins.torch_ops`). On other devices the contract
op runs and the side branches follow as torch ops. The order of additions is the
reference's: conv ``((binconv + bias -> RPReLU) + shortcut) + LRMB``, linear
``(binlin + bias + LRMB) + SMB``. Everything else in the model (norms, attention, the
full-precision convs) is left untouched.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import ContextManager, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BackendUnavailable, CheckpointError
from ..models.binary_layers import BinaryConv2d, BinaryLinear
from ..models.unet import iter_binary_layers
from ..plugins import torch_ops
from .base import Backend, BackendSpec, ParityRunner, UNetFn, register, torch_device
from .torch_ref import float_twin_unet, reference_unet



def _label(name: str) -> ContextManager[object]:
    """A profiler range named ``name`` around a packed layer, only while a profiler runs:
    record_function costs about 8 us per call even when none does (1.5 ms per UNet forward)."""
    if torch._C._autograd._profiler_enabled():
        return torch.autograd.profiler.record_function(name)
    return contextlib.nullcontext()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous().clone()


def _smb_csr(branch: nn.Module) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SMB as CSR over output channels: (rowptr int32 [O+1], col int16 [nnz], val float32 [nnz]).

    Entries are sorted by (output, input) channel and duplicates summed, as the
    reference's ``index_add_`` sums them.
    """
    rows, cols = branch.indices().long()
    o, c = int(branch.out_features), int(branch.in_features)
    keys, inverse = torch.unique(rows * c + cols, sorted=True, return_inverse=True)
    val = torch.zeros(keys.numel(), dtype=torch.float32).index_add_(0, inverse, _f32(branch.values))
    rowptr = torch.zeros(o + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(keys // c, minlength=o).cumsum(0)
    if c > torch.iinfo(torch.int16).max:
        raise CheckpointError(f"SMB over {c} input channels: more than the int16 column table holds")
    return rowptr.to(torch.int32), (keys % c).to(torch.int16), val


class _PackedBinary(nn.Module):
    """Shared part: the packed weight of the binary branch and the SMB/LRMB side branches."""

    def _store_packed(self, layer: nn.Module, name: str, with_side: bool) -> None:
        pw = layer.packed()
        self.layer_name = name
        self.register_buffer("wbits", torch.from_numpy(pw.bits.copy()))
        self.register_buffer("alpha", torch.from_numpy(pw.alpha.copy()))
        self.register_buffer("bias", _f32(layer.bias))
        self.register_buffer("wzero", None if pw.zero is None else torch.from_numpy(pw.zero.copy()))
        self.num_zero_weights = pw.num_zero_weights
        smb = with_side and layer.has_smb
        rowptr, col, val = _smb_csr(layer.skip_connection) if smb else (None, None, None)
        self.register_buffer("smb_rowptr", rowptr)
        self.register_buffer("smb_col", col)
        self.register_buffer("smb_val", val)
        down = up = None
        if with_side and layer.has_lrmb:
            # LoRA naming differs between the two layer kinds; down is the one applied first
            lora = layer.lora
            down, up = (lora.A, lora.B) if isinstance(layer, BinaryConv2d) else (lora.B, lora.A)
            down, up = _f32(down.weight).flatten(1), _f32(up.weight).flatten(1)
        self.register_buffer("lr_down", down)  # [r, C]
        self.register_buffer("lr_up", up)  # [O, r]

    @property
    def has_smb(self) -> bool:
        return self.smb_rowptr is not None

    @property
    def has_lrmb(self) -> bool:
        return self.lr_down is not None

    def _side(self, rprelu: Optional[torch.Tensor] = None) -> torch_ops.SideBranches:
        return torch_ops.SideBranches(rprelu, self.smb_rowptr, self.smb_col, self.smb_val, self.lr_down, self.lr_up)


class PackedBinaryConv2d(_PackedBinary):
    """A BinaryConv2d on packed 1-bit weights (see module docstring)."""

    def __init__(self, layer: BinaryConv2d, name: str = ""):
        super().__init__()
        self.uses_avgpool_shortcut = bool(layer.uses_avgpool_shortcut)
        # the stride-2 same-width layers: their SMB/LRMB are dead in the reference
        self._store_packed(layer, name, with_side=not self.uses_avgpool_shortcut)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride = layer.kernel_size, layer.stride
        self.pads: Tuple[int, int, int, int] = tuple(layer.pads)  # type: ignore[assignment]
        self._stride2 = list(torch_ops._pair(self.stride, "stride"))
        self._pads4 = list(self.pads)
        rp = [layer.relu.pr_bias0.bias, layer.relu.pr_prelu.weight, layer.relu.pr_bias1.bias]
        self.register_buffer("rprelu", torch.stack([_f32(t).view(-1) for t in rp]))  # [3, O]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pads={self.pads}, smb={self.has_smb}, lrmb={self.has_lrmb}, "
            f"avgpool={self.uses_avgpool_shortcut}, zero_mask={self.wzero is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _label("bimaco.binary_layer"):
            if torch_ops.fused_native(x):
                # tensors validated at pack time; the kernel re-checks every shape: skip the
                # Python checks, which cost as much as a small layer
                y = torch.ops.bimaco.binary_conv2d_fused(
                    x, self.wbits, self.alpha, self.bias, self._stride2, self._pads4, self.in_channels, self.wzero,
                    self.rprelu, self.smb_rowptr, self.smb_col, self.smb_val, self.lr_down, self.lr_up,
                )
            else:
                y = torch_ops.binary_conv2d_fused(
                    x, self.wbits, self.alpha, self.bias, self.stride, self.pads, self.in_channels, self.wzero,
                    self._side(self.rprelu),
                )
        if self.uses_avgpool_shortcut:
            with _label("bimaco.avgpool_shortcut"):
                y = y + F.avg_pool2d(x, kernel_size=self.stride, stride=self.stride)
        return y


class PackedBinaryLinear(_PackedBinary):
    """A BinaryLinear on packed 1-bit weights (see module docstring)."""

    def __init__(self, layer: BinaryLinear, name: str = ""):
        super().__init__()
        self._store_packed(layer, name, with_side=True)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, smb={self.has_smb}, "
            f"lrmb={self.has_lrmb}, zero_mask={self.wzero is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _label("bimaco.binary_layer"):
            if torch_ops.fused_native(x):  # see PackedBinaryConv2d.forward
                return torch.ops.bimaco.binary_linear_fused(
                    x, self.wbits, self.alpha, self.bias, self.in_features, self.wzero,
                    self.smb_rowptr, self.smb_col, self.smb_val, self.lr_down, self.lr_up,
                )
            return torch_ops.binary_linear_fused(
                x, self.wbits, self.alpha, self.bias, self.in_features, self.wzero, self._side()
            )


PACKED_TYPES = (PackedBinaryConv2d, PackedBinaryLinear)


def pack_layer(layer: nn.Module, name: str = "") -> nn.Module:
    """The packed twin of one reference binary layer."""
    if isinstance(layer, BinaryConv2d):
        return PackedBinaryConv2d(layer, name)
    if isinstance(layer, BinaryLinear):
        return PackedBinaryLinear(layer, name)
    raise CheckpointError(f"layer {name or type(layer).__name__} is not a BinaryConv2d/BinaryLinear")


def pack_unet(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every binary layer of a reference UNet by its packed twin.

    By default the input model is left intact and a copy is returned; the copy shares
    no float latent weights with it (the binary layers are substituted during the copy,
    not copied and then dropped). Warns once if the native ops are missing (the
    reference fallback then runs the packed layers).
    """
    layers = iter_binary_layers(model)
    if not layers:
        raise CheckpointError("pack_unet: the model has no BinaryConv2d/BinaryLinear layer (a float model?)")
    packed = {id(m): pack_layer(m, name) for name, m in layers}
    if inplace:
        target = model
        for name, m in layers:
            parent_name, _, attr = name.rpartition(".")
            parent = target.get_submodule(parent_name) if parent_name else target
            setattr(parent, attr, packed[id(m)])
    else:
        memo: Dict[int, object] = dict(packed)
        target = copy.deepcopy(model, memo)
    target.eval().requires_grad_(False)
    return target


# --------------------------------------------------------------------------- accounting


def _unique_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    seen = set()
    for t in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        yield t


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer the module holds (shared tensors counted once)."""
    return sum(t.numel() * t.element_size() for t in _unique_tensors(module))


def memory_report(packed: nn.Module, float_params: Optional[int] = None) -> Dict[str, object]:
    """Weight memory of a packed model, split into binary words / side branches / everything else.

    ``float_params``: parameter count of the float model to compare with (4 bytes each).
    """
    binary_words = side = 0
    for m in packed.modules():
        if isinstance(m, PACKED_TYPES):
            for name, b in m.named_buffers(recurse=True):
                nbytes = b.numel() * b.element_size()
                if name in ("wbits", "wzero"):
                    binary_words += nbytes
                else:
                    side += nbytes
    total = tensor_bytes(packed)
    report: Dict[str, object] = {
        "total_bytes": total,
        "binary_weight_bytes": binary_words,
        "binary_layer_side_bytes": side,
        "other_bytes": total - binary_words - side,
    }
    if float_params is not None:
        report["float_bytes"] = float_params * 4
        report["compression"] = float_params * 4 / total
    return report


# --------------------------------------------------------------------------- backend


@contextlib.contextmanager
def cpu_isa(name: Optional[str]) -> Iterator[None]:
    """The packed CPU kernels on instruction set ``name`` inside the block (None: unchanged), then the
    process-wide choice again. An ISA this CPU or library lacks is a BackendUnavailable naming the ones it has."""
    if name is None:
        yield
        return
    torch_ops.set_cpu_isa(name)
    try:
        yield
    finally:  # back to the process-wide choice ($BIMACO_CPU_ISA, else automatic)
        torch_ops.set_cpu_isa(os.environ.get(torch_ops.ISA_ENV, "").strip() or "auto")


def kernel_description(isa: Optional[str] = None) -> str:
    """Which kernels the packed layers run on: the native CPU kernels and their ISA, or the fallback."""
    if not torch_ops.ops_available():
        return f"the pure-torch fallback of the op contract ({torch_ops.unavailable_reason()})"
    forced = os.environ.get(torch_ops.ISA_ENV, "").strip()
    how = "" if isa else (f" (${torch_ops.ISA_ENV}={forced})" if forced and forced != "auto" else " (automatic choice)")
    return f"native CPU kernels, ISA {isa or torch_ops.cpu_isa()}{how}"


class PackedTorchParityRunner(ParityRunner):
    """The packed torch backend for ``check``: each packed layer run on its own, and the packed UNet
    with the input every packed layer saw; on the CPU ISA ``spec.isa`` (None: the automatic one)."""

    def __init__(self, spec: BackendSpec):
        from ..models.probes import capture_binary_inputs

        if torch_device(spec.device) != "cpu":
            raise BackendUnavailable("check --backend torch runs the packed CPU kernels: use --device cpu")
        self._capture = capture_binary_inputs
        with cpu_isa(spec.isa):  # an unavailable ISA fails here, before the model is built
            pass
        self.isa = spec.isa
        self.model = pack_unet(reference_unet(spec), inplace=True)
        self.layers = {name: m for name, m in self.model.named_modules() if isinstance(m, PACKED_TYPES)}
        self.layer_names: List[str] = list(self.layers)
        self.layer_ranks = {n: 4 for n, m in self.layers.items() if isinstance(m, PackedBinaryConv2d)}
        self.float_dtype = np.dtype(np.float32)
        self.description = f"torch: packed 1-bit layers on {kernel_description(spec.isa)}"

    def run_layer(self, name: str, x: np.ndarray) -> np.ndarray:
        if name not in self.layers:
            raise CheckpointError(f"layer '{name}' is not a packed binary layer of this model")
        with torch.no_grad(), cpu_isa(self.isa):
            return self.layers[name](torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    def run_unet(self, x: np.ndarray, t: np.ndarray, lq: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        with torch.no_grad(), cpu_isa(self.isa), self._capture(self.model, layers=list(self.layers.items())) as cap:
            out = self.model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(lq))
        return out.numpy(), {k: v.numpy() for k, v in cap.items()}


@register
class PackedTorchBackend(Backend):
    """The reference UNet with its binary layers packed onto the bimaco torch ops."""

    name = "torch"
    description = "packed 1-bit weights on the bimaco torch ops (CPU or CUDA kernels); config (+ checkpoint)"
    uses = frozenset({"ckpt", "isa"})

    def check_device(self) -> None:
        torch_device(self.spec.device)

    def unet(self) -> UNetFn:
        device = torch_device(self.spec.device)
        isa = self.spec.isa
        with cpu_isa(isa):  # an unavailable ISA fails before the model is built
            pass
        # packed on the CPU, then moved: packing reads the float latent weights once
        model = pack_unet(reference_unet(self.spec), inplace=True).to(device)
        if isa is None:
            return model

        def on_isa(x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
            with cpu_isa(isa):
                return model(x, t, lq)

        return on_isa

    def parity_runner(self) -> ParityRunner:
        return PackedTorchParityRunner(self.spec)

    def float_baseline(self) -> Tuple[UNetFn, str]:
        return float_twin_unet(self.spec)
