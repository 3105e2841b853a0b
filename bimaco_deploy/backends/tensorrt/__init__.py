"""TensorRT: :mod:`.builder` makes engines from ``unet.onnx`` (profiles, precision, timing
cache, plugin library loading); :mod:`.runner` runs them (the ``tensorrt`` backend).
TensorRT itself is imported only when an engine is built or run."""
