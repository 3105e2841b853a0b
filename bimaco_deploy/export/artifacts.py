"""The names of the files in an artifact directory written by ``bimaco-deploy export``.

One home for them: the exporter writes these names, and every backend, the engine
builder and the checker read them from here.
"""

from __future__ import annotations

UNET_FILE = "unet.onnx"  # custom `bimaco` nodes: the TensorRT-bound graph
PORTABLE_FILE = "unet_portable.onnx"  # the same graph in standard ops (ONNX Runtime)
FLOAT_FILE = "unet_float.onnx"  # `--float-baseline`: the float model of the same family
VQ_ENCODER_FILE = "vq_encoder.onnx"
VQ_DECODER_FILE = "vq_decoder.onnx"
REPORT_FILE = "export_report.json"
