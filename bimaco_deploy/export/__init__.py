"""Export a BiMaCoSR checkpoint to packed 1-bit ONNX.

* :mod:`.exporter`: :func:`export` (the ``bimaco-deploy export`` command), the artifact directory.
* :mod:`.unet_graph`: the UNet written by hand from config + state dict (dynamic batch/H/W).
* :mod:`.onnx_nodes`: one binary layer: the ``bimaco`` core node and its side branches.
* :mod:`.portable`: the standard-op expansion of the custom nodes (the portable twin).
* :mod:`.smb_table`: the sparse branches of a standard-op graph in one compact table.
* :mod:`.layer_params`: binary layers read and packed from a state dict.
* :mod:`.vq`: the VQ-f4 encoder and decoder graphs.
* :mod:`.report`: ``export_report.json`` and its table.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export", "build_unet_graph", "to_portable"]


def __getattr__(name: str) -> Any:
    # imported lazily: `import bimaco_deploy.export` stays cheap (no torch) for the CLI
    if name == "export":
        from .exporter import export

        return export
    if name == "build_unet_graph":
        from .unet_graph import build_unet_graph

        return build_unet_graph
    if name == "to_portable":
        from .portable import to_portable

        return to_portable
    raise AttributeError(name)
