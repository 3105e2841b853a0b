"""The whole deployed system's size: UNet + VQ encoder + VQ decoder, at every autoencoder precision.

The paper's 23.8x counts the UNet only; a user ships the autoencoder too (55.3 M parameters
in the published model, 221 MB in float32). The float system everything is compared with is
the float UNet of the same family plus the float32 autoencoder (695.7 MB published).

Autoencoder bytes per precision (weights as the deployed graphs store them):

* fp32 / fp16 / bf16: 4 / 2 / 2 bytes per parameter;
* int8 (:mod:`.vq_quant`): every convolution weight 1 byte, plus a float32 scale per output
  channel and a 32-bit bias; GroupNorm parameters and the codebook stay float32.

``export`` reports the measured file sizes of what it wrote beside these figures;
``inspect`` reports the figures with the ideal UNet size of its inventory.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..models.config import ModelConfig, VQConfig
from ..models.precision import PRECISIONS

_FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def _meta_autoencoder(cfg: VQConfig) -> nn.Module:
    from ..models.autoencoder import VQModel

    with torch.device("meta"):
        return VQModel(cfg)


def vq_parameter_counts(cfg: VQConfig) -> Dict[str, int]:
    """Parameters of the encoder graph (encoder + quant_conv) and the decoder graph (codebook,
    post_quant_conv, decoder)."""
    m = _meta_autoencoder(cfg)
    enc = sum(p.numel() for n, p in m.named_parameters() if n.startswith(("encoder.", "quant_conv.")))
    return {"encoder": enc, "decoder": sum(p.numel() for p in m.parameters()) - enc}


def vq_bytes(cfg: VQConfig, precision: str) -> Dict[str, int]:
    """Deployed weight bytes of the encoder and decoder graphs at ``precision``."""
    if precision in _FLOAT_BYTES:
        return {k: v * _FLOAT_BYTES[precision] for k, v in vq_parameter_counts(cfg).items()}
    if precision != "int8":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    m = _meta_autoencoder(cfg)
    out = {"encoder": 0, "decoder": 0}
    for name, mod in m.named_modules():
        part = "encoder" if name.startswith(("encoder", "quant_conv")) else "decoder"
        own = list(mod.parameters(recurse=False))
        if isinstance(mod, nn.Conv2d):
            out[part] += mod.weight.numel() + 4 * mod.out_channels + (4 * mod.bias.numel() if mod.bias is not None else 0)
        else:
            out[part] += 4 * sum(p.numel() for p in own)
    return out


def float_system_bytes(cfg: ModelConfig) -> Dict[str, int]:
    """The float system: the float UNet of the same family and the autoencoder, both float32."""
    from ..models.inventory import float_param_count

    unet = 4 * float_param_count(cfg)
    vq = sum(vq_bytes(cfg.autoencoder, "fp32").values()) if cfg.autoencoder is not None else 0
    return {"unet": unet, "autoencoder": vq, "total": unet + vq}


def system_sizes(cfg: ModelConfig, unet_bytes: int, *, measured: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Whole-system size at every autoencoder precision, beside the UNet-only figure.

    ``unet_bytes``: the deployed UNet (a file size, or the inventory's ideal size);
    ``measured``: ``{"precision": p, "encoder": bytes, "decoder": bytes}`` of written graphs,
    which replace the estimate for that precision.
    """
    flt = float_system_bytes(cfg)
    rows: List[Dict[str, Any]] = []
    if cfg.autoencoder is not None:
        for p in PRECISIONS:
            vq = vq_bytes(cfg.autoencoder, p)
            source = "estimate"
            if measured and measured.get("precision") == p:
                vq = {"encoder": int(measured["encoder"]), "decoder": int(measured["decoder"])}
                source = "files"
            total = unet_bytes + vq["encoder"] + vq["decoder"]
            rows.append({"vq_precision": p, "unet": unet_bytes, "vq_encoder": vq["encoder"], "vq_decoder": vq["decoder"],
                         "total": total, "vs_float_system": flt["total"] / total, "source": source})
    return {"float_system": flt, "unet_only": {"unet": unet_bytes, "vs_float_unet": flt["unet"] / unet_bytes},
            "by_vq_precision": rows}


def render_system_sizes(sizes: Dict[str, Any], title: str = "whole system: UNet + VQ encoder + VQ decoder"):
    """A rich Table of :func:`system_sizes`."""
    from rich.table import Table

    f = sizes["float_system"]
    t = Table(title=title)
    for c in ("autoencoder", "UNet MB", "encoder MB", "decoder MB", "total MB", "vs float system", ""):
        t.add_column(c, justify="right")
    for r in sizes["by_vq_precision"]:
        t.add_row(r["vq_precision"], f"{r['unet'] / 1e6:.1f}", f"{r['vq_encoder'] / 1e6:.1f}", f"{r['vq_decoder'] / 1e6:.1f}",
                  f"{r['total'] / 1e6:.1f}", f"{r['vs_float_system']:.1f}x", r["source"])
    u = sizes["unet_only"]
    t.add_row("UNet only", f"{u['unet'] / 1e6:.1f}", "", "", "", f"{u['vs_float_unet']:.1f}x", "vs float UNet")
    t.add_row("float system", f"{f['unet'] / 1e6:.1f}", "", "", f"{f['total'] / 1e6:.1f}", "1.0x",
              "float UNet + fp32 autoencoder")
    return t
