"""What a model holds: binary layers, parameters per branch, ideal deployed size.

Used by ``bimaco-deploy inspect``. Without a checkpoint the model is built on torch's
``meta`` device, so even the published config is counted in a second with no memory.

Deployed-size model (the "ideal" a packed artifact should approach):

* BMB: 1 bit per latent weight (+ tail padding to whole int32 words along input
  channels, as the op contract packs them), alpha per output channel (fp32);
* SMB: CSR per layer: values, int16 column indices, int32 row pointers;
* LRMB, RPReLU/bias, full-precision layers: fp32, or fp16 for the "fp16 side
  branches" figure (alpha stays fp32 in both);
* dead entries (stored by the original, never read) are not deployed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch

from ..plugins.contract import num_words
from .binary_layers import BinaryConv2d, BinaryLinear
from .config import ModelConfig, float_twin
from .swin import SwinBlock
from .unet import SwinUNet, iter_binary_layers


@dataclass
class BranchCounts:
    """Parameter counts (elements) per branch."""

    bmb_weights: int = 0  # binarized latent weights (1 bit each when deployed)
    bmb_packed_words: int = 0  # int32 words after packing (tail bits included)
    alpha: int = 0  # per-output-channel weight scales
    lrmb: int = 0
    smb_values: int = 0
    smb_rows: int = 0  # output rows of the SMB matrices (CSR row pointers)
    rprelu_bias: int = 0  # layer bias + RPReLU (two biases and slopes)
    full_precision: int = 0  # float layers and norms, relative-position tables
    dead: int = 0  # stored by the original, never read by the forward
    buffers: int = 0  # constant buffers the forward reads (relative_position_index)


@dataclass
class Inventory:
    """The result of :func:`inventory`."""

    config: str
    binary: bool
    binary_conv_layers: int
    binary_linear_layers: int
    conv_by_kernel: Dict[str, int]
    counts: BranchCounts
    float_model_params: int
    deployed_bytes_fp32: int
    deployed_bytes_fp16_side: int
    compression_fp32: float
    compression_fp16_side: float
    checkpoint: Optional[str] = None
    exact_zero_latent_weights: Optional[int] = None
    notes: List[str] = field(default_factory=list)

    @property
    def binary_layers(self) -> int:
        """Every binary layer: BinaryConv2d and BinaryLinear together (178 in the published model)."""
        return self.binary_conv_layers + self.binary_linear_layers

    def to_dict(self) -> dict:
        return {"binary_layers": self.binary_layers, **asdict(self)}


def _dead_counts(model: SwinUNet) -> int:
    """Elements of the entries an original checkpoint carries that this model does not read."""
    dead = 0
    for _, m in iter_binary_layers(model):
        if isinstance(m, BinaryConv2d):
            dead += m.in_channels  # move0.bias
            if m.uses_avgpool_shortcut:  # their SMB (values + 2 index rows) and LRMB
                nnz = 2 * max(m.in_channels, m.out_channels)
                dead += 3 * nnz + m.rank * (m.in_channels + m.out_channels)
        else:
            dead += m.in_features  # channel_threshold
    for mod in model.modules():
        if isinstance(mod, SwinBlock) and mod.shift:
            # attn_mask [nW, w^2, w^2], built for the construction resolution
            dead += (mod.construction_size // mod.window) ** 2 * mod.window**4
    return dead


def count_branches(model: SwinUNet) -> BranchCounts:
    """Split every parameter of a (binary or float) UNet into its branch."""
    c = BranchCounts()
    binary_param_ids = set()
    for _, m in iter_binary_layers(model):
        for p in m.parameters():
            binary_param_ids.add(id(p))
        w = m.weight
        c.bmb_weights += w.numel()
        c.alpha += w.shape[0]
        if isinstance(m, BinaryConv2d):
            c.bmb_packed_words += m.out_channels * m.kernel_size**2 * num_words(m.in_channels)
            c.rprelu_bias += 4 * m.out_channels
        else:
            c.bmb_packed_words += m.out_features * num_words(m.in_features)
            c.rprelu_bias += m.out_features
        if getattr(m, "has_lrmb", False):
            c.lrmb += sum(p.numel() for p in m.lora.parameters())
        if getattr(m, "has_smb", False):
            c.smb_values += m.skip_connection.values.numel()
            c.smb_rows += m.skip_connection.out_features
    c.full_precision = sum(p.numel() for p in model.parameters() if id(p) not in binary_param_ids)
    c.buffers = sum(b.numel() for n, b in model.named_buffers() if n.endswith("relative_position_index"))
    if any(True for _ in iter_binary_layers(model)):
        c.dead = _dead_counts(model)
    return c


def deployed_bytes(c: BranchCounts, side_bytes: int) -> int:
    """Bytes of the deployed model under the size model of this module."""
    bmb = 4 * c.bmb_packed_words + 4 * c.alpha
    smb = c.smb_values * (side_bytes + 2) + 4 * (c.smb_rows + 1)
    side = (c.lrmb + c.rprelu_bias + c.full_precision) * side_bytes
    return bmb + smb + side


def float_param_count(cfg: ModelConfig) -> int:
    """Parameters of the full-precision model of the same family (built on the meta device)."""
    with torch.device("meta"):
        model = SwinUNet(float_twin(cfg.unet))
    return sum(p.numel() for p in model.parameters())


def inventory(cfg: ModelConfig, model: Optional[SwinUNet] = None, checkpoint: Optional[str] = None) -> Inventory:
    """Count a model's layers and parameters per branch and its ideal deployed size.

    ``model`` is a loaded model (to count exact zeros in its weights); without one the
    structure is built on the meta device.
    """
    from .unet import build_unet

    if model is None:
        with torch.device("meta"):
            model = build_unet(cfg.unet, init=False)
    layers = iter_binary_layers(model)
    convs = [m for _, m in layers if isinstance(m, BinaryConv2d)]
    linears = [m for _, m in layers if isinstance(m, BinaryLinear)]
    by_kernel: Dict[str, int] = {}
    for m in convs:
        key = f"{m.kernel_size}x{m.kernel_size}" + (f" stride {m.stride}" if m.stride > 1 else "")
        by_kernel[key] = by_kernel.get(key, 0) + 1
    counts = count_branches(model)
    float_params = float_param_count(cfg)
    d32 = deployed_bytes(counts, 4) if layers else 4 * float_params
    d16 = deployed_bytes(counts, 2) if layers else 2 * float_params
    zeros = None
    if layers and next(model.parameters()).device.type != "meta":
        zeros = int(sum(int((m.weight == 0).sum()) for _, m in layers))
    return Inventory(
        config=str(cfg.source),
        binary=bool(layers),
        binary_conv_layers=len(convs),
        binary_linear_layers=len(linears),
        conv_by_kernel=by_kernel,
        counts=counts,
        float_model_params=float_params,
        deployed_bytes_fp32=d32,
        deployed_bytes_fp16_side=d16,
        compression_fp32=4 * float_params / d32,
        compression_fp16_side=4 * float_params / d16,
        checkpoint=checkpoint,
        exact_zero_latent_weights=zeros,
    )


def render_inventory(inv: Inventory):
    """A rich Table of an inventory."""
    from rich.table import Table

    c = inv.counts
    t = Table(title=f"bimaco-deploy inspect: {inv.config}", show_lines=False)
    t.add_column("item")
    t.add_column("value", justify="right")
    t.add_row("binary layers", f"{inv.binary_layers}")
    t.add_row("  BinaryConv2d", f"{inv.binary_conv_layers} ({', '.join(f'{k}: {v}' for k, v in inv.conv_by_kernel.items())})")
    t.add_row("  BinaryLinear", f"{inv.binary_linear_layers}")
    t.add_row("BMB latent weights (1 bit each)", f"{c.bmb_weights:,}")
    t.add_row("BMB alpha (per output channel)", f"{c.alpha:,}")
    t.add_row("LRMB parameters", f"{c.lrmb:,}")
    t.add_row("SMB values", f"{c.smb_values:,}")
    t.add_row("RPReLU + bias parameters", f"{c.rprelu_bias:,}")
    t.add_row("full-precision parameters", f"{c.full_precision:,}")
    t.add_row("dead entries (stored, never read)", f"{c.dead:,}")
    if inv.exact_zero_latent_weights is not None:
        t.add_row("exact-zero latent weights", f"{inv.exact_zero_latent_weights:,}")
    t.add_row("float model parameters (FP32)", f"{inv.float_model_params:,} ({4 * inv.float_model_params / 2**20:.1f} MiB)")
    t.add_row("ideal deployed size, fp32 side branches", f"{inv.deployed_bytes_fp32 / 2**20:.2f} MiB")
    t.add_row("ideal deployed size, fp16 side branches", f"{inv.deployed_bytes_fp16_side / 2**20:.2f} MiB")
    t.add_row("compression vs FP32 float model", f"{inv.compression_fp32:.1f}x (fp32 side) / {inv.compression_fp16_side:.1f}x (fp16 side)")
    return t
