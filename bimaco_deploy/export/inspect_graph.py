"""What an exported UNet graph holds (``bimaco-deploy inspect --onnx unet.onnx``).

Read from the file alone: its form (custom ``bimaco`` nodes, portable or float), the op
contract version it was written for, the config and weights it was exported from,
its inputs and outputs, the binary layers and node counts, and its bytes split by
what they are (sign bits, side branches, full-precision weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

from ..errors import ArtifactError
from ..plugins import contract
from . import provenance
from .artifacts import UNET_FILE

PathLike = Union[str, Path]

#: (name fragment, category) in order: the first fragment found in an initializer's name decides.
_CATEGORIES = (
    ("wbits", "sign bits (1 bit per binary weight, int32 words)"),
    ("wzero", "zero masks of binary weights"),
    ("alpha", "per-channel scales (alpha)"),
    ("smb", "sparse branch (SMB)"),
    ("lrmb", "low-rank branch (LRMB)"),
    ("rprelu", "bias and RPReLU"),
    ("bias", "bias and RPReLU"),
)

_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}
_ELEM_NAMES = {1: "float32", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 5: "int16", 3: "int8", 2: "uint8"}


def _category(name: str) -> str:
    low = name.lower()
    for fragment, cat in _CATEGORIES:
        if fragment in low:
            return cat
    return "full-precision weights and constants"


def _dims(vi: Any) -> List[Union[int, str]]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def inspect_onnx(path: PathLike) -> Dict[str, Any]:
    """A JSON-ready description of an exported UNet graph (a file, or an artifact folder: its unet.onnx)."""
    import onnx
    from onnx import numpy_helper

    p = Path(path)
    if p.is_dir():
        p = p / UNET_FILE
    if not p.is_file():
        raise ArtifactError(f"--onnx {p}: ONNX file not found")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # onnx raises DecodeError and friends
        raise ArtifactError(f"--onnx {p}: not a readable ONNX model ({type(e).__name__})") from None
    meta = {q.key: q.value for q in model.metadata_props}
    if "bimaco_contract_version" not in meta:
        raise ArtifactError(f"--onnx {p}: not written by bimaco-deploy export (no bimaco metadata)")
    bytes_by: Dict[str, int] = {}
    params_by: Dict[str, int] = {}
    for t in model.graph.initializer:
        n = int(numpy_helper.to_array(t).size) if not t.raw_data else len(t.raw_data) // _ELEM_BYTES.get(t.data_type, 1)
        cat = _category(t.name)
        bytes_by[cat] = bytes_by.get(cat, 0) + n * _ELEM_BYTES.get(t.data_type, 4)
        params_by[cat] = params_by.get(cat, 0) + n
    ops: Dict[str, int] = {}
    for node in model.graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        ops[key] = ops.get(key, 0) + 1
    layers = provenance_layers(meta)
    cfg = provenance.artifact_config(meta, p) if meta.get("config_yaml") else None
    inits = {t.name for t in model.graph.initializer}
    return {
        "file": str(p),
        "file_bytes": p.stat().st_size,
        "graph_form": meta.get("graph_form"),
        "contract_version": meta.get("bimaco_contract_version"),
        "contract_version_here": str(contract.CONTRACT_VERSION),
        "exported_by": meta.get("bimaco_deploy_version"),
        "float_dtype": meta.get("float_dtype"),
        "config_source": meta.get("config_source"),
        "config": None if cfg is None else {
            "model_channels": cfg.unet.model_channels, "channel_mult": list(cfg.unet.channel_mult),
            "num_res_blocks": cfg.unet.num_res_blocks, "size_multiple": cfg.unet.size_multiple,
        },
        "weights": provenance.describe_weights(meta),
        "inputs": [{"name": i.name, "dims": _dims(i), "dtype": _ELEM_NAMES.get(i.type.tensor_type.elem_type, "?")}
                   for i in model.graph.input if i.name not in inits],
        "outputs": [{"name": o.name, "dims": _dims(o), "dtype": _ELEM_NAMES.get(o.type.tensor_type.elem_type, "?")}
                    for o in model.graph.output],
        "binary_layers": len(layers),
        "bimaco_nodes": {k.split("::", 1)[1]: v for k, v in ops.items() if k.startswith(f"{contract.DOMAIN}::")},
        "nodes": sum(ops.values()),
        "initializer_bytes": dict(sorted(bytes_by.items(), key=lambda kv: -kv[1])),
        "initializer_elements": params_by,
        "opset": [{"domain": o.domain or "ai.onnx", "version": o.version} for o in model.opset_import],
    }


def provenance_layers(meta: Dict[str, str]) -> List[Any]:
    """The binary layer table the exporter records (empty for graphs without one)."""
    import json

    raw = meta.get("binary_layers")
    return json.loads(raw) if raw else []


def render_onnx_inventory(info: Dict[str, Any]) -> Any:
    """A rich Table of :func:`inspect_onnx`."""
    from rich.table import Table

    t = Table(title=f"{info['file']} ({info['file_bytes']:,} bytes)")
    t.add_column("item")
    t.add_column("value", overflow="fold")
    same = info["contract_version"] == info["contract_version_here"]
    t.add_row("graph form", str(info["graph_form"]))
    t.add_row("op contract", f"v{info['contract_version']}" + ("" if same else
              f" (this bimaco-deploy implements v{info['contract_version_here']}: re-export)"))
    t.add_row("exported by", f"bimaco-deploy {info['exported_by']}")
    t.add_row("config", f"{info['config_source']}" + (f": {info['config']}" if info["config"] else ""))
    t.add_row("weights", info["weights"] or "not recorded (an older export)")
    t.add_row("float dtype", str(info["float_dtype"]))
    for io in ("inputs", "outputs"):
        t.add_row(io, "; ".join(f"{v['name']} {v['dtype']} {v['dims']}" for v in info[io]))
    t.add_row("binary layers", f"{info['binary_layers']} ("
              + ", ".join(f"{v} {k}" for k, v in info["bimaco_nodes"].items()) + " custom nodes)"
              if info["bimaco_nodes"] else str(info["binary_layers"]))
    t.add_row("nodes", f"{info['nodes']:,}")
    for cat, nbytes in info["initializer_bytes"].items():
        t.add_row(f"  {cat}", f"{nbytes:,} bytes ({info['initializer_elements'][cat]:,} elements)")
    return t
