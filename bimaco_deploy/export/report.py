"""``export_report.json``: what was exported, how big it is, and from what.

Per binary layer: shapes, packed bytes, SMB nonzeros and row width, LRMB rank,
exact-zero latent weights; totals: file sizes, compression against the float
model's FP32 parameters, op counts per graph, tool versions and the sha256 of
every input file. :func:`render_report` prints the same as a rich table.
"""

from __future__ import annotations

import collections
import hashlib
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import onnx

from .layer_params import BinaryConvLayer, BinaryLinearLayer

#: Parameters of the full-precision model of the published config (spec, appendix).
PUBLISHED_FLOAT_PARAMS = 118_593_583


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tool_versions() -> Dict[str, str]:
    """Versions of the libraries that shaped the artifacts."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__, "onnx": onnx.__version__}
    for mod in ("torch", "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional at report time
            out[mod] = "absent"
    from .. import __version__ as ours

    out["bimaco_deploy"] = ours
    return out


def op_counts(model: onnx.ModelProto) -> Dict[str, int]:
    """Node count per (domain-qualified) op type."""
    c = collections.Counter((f"{n.domain}:{n.op_type}" if n.domain else n.op_type) for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def layer_row(layer: Any, x_rank: int) -> Dict[str, Any]:
    """One binary layer's entry."""
    pw = layer.packed
    row: Dict[str, Any] = {
        "name": layer.name,
        "kind": layer.kind,
        "in": int(layer.in_channels),
        "out": int(layer.out_channels),
        "input_rank": int(x_rank),
        "latent_weights": int(layer.latent_weight_count),
        "packed_bytes": int(pw.bits.nbytes + (pw.zero.nbytes if pw.zero is not None else 0)),
        "zero_weights": int(pw.num_zero_weights),
        "zero_alpha_channels": int((pw.alpha == 0).sum()),
        "zero_mask": pw.zero is not None,
        "smb_nnz": int(layer.smb.nnz) if layer.smb is not None else 0,
        "smb_row_width": int(layer.smb.row_width) if layer.smb is not None else 0,
        "lrmb_rank": int(layer.lrmb[0].shape[0]) if layer.lrmb is not None else 0,
    }
    if isinstance(layer, BinaryConvLayer):
        row.update(kernel=layer.kernel, stride=layer.stride, padding=layer.padding,
                   shortcut="avgpool" if layer.avgpool_shortcut else ("smb" if layer.smb is not None else "none"))
    else:
        assert isinstance(layer, BinaryLinearLayer)
        row.update(kernel=None, stride=None, padding=None, shortcut="smb" if layer.smb is not None else "none")
    return row


def initializer_breakdown(model: onnx.ModelProto) -> Dict[str, int]:
    """Bytes of initializers by role (from the naming scheme of :mod:`.onnx_nodes`)."""
    roles = {
        ".wbits": "sign_bits",
        ".wzero": "zero_masks",
        ".alpha": "alpha",
        ".bias": "bias",
        ".rprelu_": "rprelu",
        ".lrmb_": "lrmb",
        "smb_table.": "smb",
        ".smb_": "smb",  # a fused node's own CSR (rowptr, col, val)
    }
    out: Dict[str, int] = collections.defaultdict(int)
    for t in model.graph.initializer:
        size = len(t.raw_data) if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).nbytes
        role = "other_full_precision"
        for key, r in roles.items():
            if key in t.name:
                role = r
                break
        out[role] += size
    return dict(sorted(out.items()))


def build_report(
    *,
    config_path: Optional[Path],
    inputs: Dict[str, Optional[Path]],
    layers: Iterable[Any],
    float_twin_params: int,
    files: Dict[str, Path],
    models: Dict[str, onnx.ModelProto],
    dead_keys: List[str],
    dtype: str,
    opset: int,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Assemble the report dict (everything JSON-serialisable)."""
    layer_rows = [layer_row(rec.layer, rec.x_rank) for rec in layers]
    fp32_bytes = int(float_twin_params) * 4
    sizes = {name: int(p.stat().st_size) for name, p in files.items()}
    compression = {name: (fp32_bytes / size if size else None) for name, size in sizes.items() if name.startswith("unet")}
    report: Dict[str, Any] = {
        "format": "bimaco-export-report/1",
        "dtype": dtype,
        "opset": opset,
        "float_model": {
            "parameters": int(float_twin_params),
            "fp32_bytes": fp32_bytes,
            "matches_published_count": int(float_twin_params) == PUBLISHED_FLOAT_PARAMS,
        },
        "files": sizes,
        "compression_vs_float_fp32": compression,
        "unet_initializer_bytes": initializer_breakdown(models["unet.onnx"]) if "unet.onnx" in models else {},
        "totals": {
            "binary_layers": len(layer_rows),
            "conv_layers": sum(r["kind"] == "conv" for r in layer_rows),
            "linear_layers": sum(r["kind"] == "linear" for r in layer_rows),
            "latent_weights": sum(r["latent_weights"] for r in layer_rows),
            "zero_weights": sum(r["zero_weights"] for r in layer_rows),
            "layers_with_zero_mask": sum(bool(r["zero_mask"]) for r in layer_rows),
            "zero_alpha_channels": sum(r["zero_alpha_channels"] for r in layer_rows),
            "smb_nnz": sum(r["smb_nnz"] for r in layer_rows),
            "smb_max_row_width": max((r["smb_row_width"] for r in layer_rows), default=0),
            "dead_keys_dropped": len(dead_keys),
        },
        "op_counts": {name: op_counts(m) for name, m in models.items()},
        "layers": layer_rows,
        "dead_keys": dead_keys,
        "inputs": {
            name: ({"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size} if p is not None else None)
            for name, p in inputs.items()
        },
        "config": str(config_path) if config_path is not None else None,
        "versions": tool_versions(),
    }
    if extra:
        report.update(extra)
    return report


def _mb(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f} MB"


def render_report(report: Dict[str, Any], console: Any = None, *, max_layers: int = 12) -> None:
    """Print a summary table (files, compression, totals) and the first layers."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    fm = report["float_model"]
    t = Table(title=f"bimaco export ({report['dtype']}, opset {report['opset']})")
    t.add_column("artifact")
    t.add_column("size", justify="right")
    t.add_column("vs float FP32", justify="right")
    for name, size in report["files"].items():
        ratio = report["compression_vs_float_fp32"].get(name)
        t.add_row(name, _mb(size), f"{ratio:.1f}x smaller" if ratio else "")
    t.add_row("float model (FP32 params)", _mb(fm["fp32_bytes"]), f"{fm['parameters']:,} params")
    console.print(t)
    b = Table(title="unet.onnx initializer bytes")
    b.add_column("role")
    b.add_column("bytes", justify="right")
    for role, n in report["unet_initializer_bytes"].items():
        b.add_row(role, f"{n:,}")
    console.print(b)
    tot = report["totals"]
    console.print(
        f"{tot['binary_layers']} binary layers ({tot['conv_layers']} conv, {tot['linear_layers']} linear), "
        f"{tot['latent_weights']:,} latent weights -> 1 bit; exact-zero weights {tot['zero_weights']:,} "
        f"({tot['zero_alpha_channels']} all-zero channels, {tot['layers_with_zero_mask']} layers need a zero mask); "
        f"SMB {tot['smb_nnz']:,} nonzeros (longest row {tot['smb_max_row_width']}); "
        f"{tot['dead_keys_dropped']} dead checkpoint entries dropped"
    )
    lt = Table(title=f"binary layers (first {min(max_layers, len(report['layers']))} of {len(report['layers'])})")
    for col in ("name", "kind", "in", "out", "k/s", "smb nnz", "rank", "zeros", "packed"):
        lt.add_column(col)
    for r in report["layers"][:max_layers]:
        ks = f"{r['kernel']}/{r['stride']}" if r["kernel"] else "-"
        lt.add_row(r["name"], r["kind"], str(r["in"]), str(r["out"]), ks, str(r["smb_nnz"]), str(r["lrmb_rank"]),
                   str(r["zero_weights"]), f"{r['packed_bytes']:,}")
    console.print(lt)
