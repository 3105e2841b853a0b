"""INT8 QDQ graphs of the VQ autoencoder, made with ``onnxruntime.quantization`` and calibrated on images.

The recipe (:data:`RECIPE`, versioned: it is part of every cache key):

* every convolution's weights in INT8, symmetric, one scale per output channel;
* activations in UINT8, asymmetric, one scale per tensor, calibrated with ORT's MinMax
  calibrator on the calibration samples (QDQ format: ONNX Runtime runs DQ -> Conv -> Q as one
  INT8 convolution, QLinearConv, with VNNI where the CPU has it);
* *weight-only* INT8 for the layers on either side of the latent (:data:`WEIGHT_ONLY`): 3-channel
  inputs or outputs, where one activation scale for the whole tensor costs the most and the
  compute is negligible. Their weights are stored in INT8 like the rest (same file size) and
  dequantized once at load time; they compute in float32. Keeping more in float buys little
  with random weights: measured on the published model, weight-only for the decoder's mid block
  and upsampling convolutions as well (35% of its multiply-adds) took decoder SR PSNR from
  about 26 to 27.5 dB while the decoder ran 1.05 s instead of 0.63 s (fp32: 1.54 s);
* GroupNorm, swish, attention (softmax and its two matrix products, inside the query-chunk
  Loop) and the codebook search stay in float32 (ONNX Runtime does not quantize subgraphs).

The encoder calibrates on the samples it is given (LR crops, 4x bicubic, as inference
feeds it: :mod:`bimaco_deploy.pipeline.calibration`), the decoder on the latents our float32
encoder graph makes from them; the decoder graph snaps them to the codebook itself, exactly
as inference does. Everything is deterministic for a given sample list.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import BackendUnavailable, InputError

#: Bump when anything below changes the graphs it makes (cache keys include it).
RECIPE_VERSION = 1

#: Convolutions that keep float activations (weight-only INT8): regexes on node names.
WEIGHT_ONLY = (
    r"^quant_conv$", r"^post_quant_conv$",
    r"^encoder\.conv_in$", r"^encoder\.conv_out$",
    r"^decoder\.conv_in$", r"^decoder\.conv_out$",
)

#: ONNX Runtime 1.32's QDQPropagationTransformer aborts the process on these graphs (a
#: vector bounds assertion) when a session is created; it only moves Q/DQ pairs across
#: reshapes and transposes, which we do not quantize. Every session on a VQ graph disables
#: it (it does nothing to graphs without Q/DQ nodes).
QDQ_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)

RECIPE: Dict[str, Any] = {
    "version": RECIPE_VERSION,
    "format": "QDQ",
    "weights": "int8, symmetric, per output channel (every Conv)",
    "activations": "uint8, asymmetric, per tensor, MinMax calibration",
    "weight_only_int8": list(WEIGHT_ONLY),
    "float": "GroupNorm, swish, attention softmax and matmuls, codebook search",
}


def _ort_quantization():
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime import quantization
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise BackendUnavailable("INT8 graphs need onnxruntime (pip install onnxruntime)") from e
    return quantization


def _session(model: onnx.ModelProto, threads: Optional[int] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(QDQ_DISABLED_OPTIMIZERS))


def weight_only_nodes(model: onnx.ModelProto) -> List[str]:
    """Names of the Conv nodes of ``model`` that keep float activations (:data:`WEIGHT_ONLY`)."""
    pats = [re.compile(p) for p in WEIGHT_ONLY]
    return [n.name for n in model.graph.node if n.op_type == "Conv" and any(p.search(n.name) for p in pats)]


def _int8_weight_only(model: onnx.ModelProto, nodes: Sequence[str]) -> None:
    """Store the weights of ``nodes`` as INT8 (symmetric, per output channel) behind a
    DequantizeLinear, in place: the same storage as the QDQ layers, float computation."""
    inits = {t.name: t for t in model.graph.initializer}
    wanted = set(nodes)
    new_nodes = []
    for node in model.graph.node:
        if node.op_type == "Conv" and node.name in wanted:
            w_name = node.input[1]
            w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
            amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            q = np.clip(np.round(w / scale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
            base = f"{node.name}.weight"
            model.graph.initializer.remove(inits[w_name])
            model.graph.initializer.extend([
                numpy_helper.from_array(q, f"{base}_int8"),
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{base}_zero_point"),
            ])
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_scale", f"{base}_zero_point"],
                                              [f"{base}_dequantized"], name=f"{base}/dequantize", axis=0))
            node.input[1] = f"{base}_dequantized"
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)


def _outer_inputs(graph: onnx.GraphProto) -> set:
    """Names a subgraph reads from its enclosing scope (inputs it neither makes nor declares)."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used = set()
    for n in graph.node:
        local.update(n.output)
    for n in graph.node:
        used.update(i for i in n.input if i)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= _outer_inputs(g)
    return used - local


def toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes topologically, counting the outer-scope names read by subgraphs
    (the Loop of the chunked attention) as inputs: ORT's quantizer sorts without them, which
    leaves the Loop before the tensors its body reads and fails ``onnx.checker``."""
    produced = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = []
    for n in graph.node:
        names = {i for i in n.input if i}
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _outer_inputs(g)
        deps.append({produced[x] for x in names if x in produced})
    order, done, pending = [], set(), list(range(len(graph.node)))
    while pending:
        rest = []
        for i in pending:
            if deps[i] <= done:
                order.append(i)
                done.add(i)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            raise InputError(f"graph {graph.name}: nodes form a cycle ({len(rest)} cannot be ordered)")
        pending = rest
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


class _Samples:
    """The calibration samples as ORT's CalibrationDataReader wants them, in a fixed order."""

    def __init__(self, input_name: str, arrays: Sequence[np.ndarray]):
        self.items = [{input_name: np.ascontiguousarray(a, dtype=np.float32)} for a in arrays]
        self.pos = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def __len__(self) -> int:
        return len(self.items)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization logs "Please consider to run pre-processing" on the root logger for
    # every graph: advice for classifiers (shape inference / folding) that our graphs do not need
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def check_quantized(model: onnx.ModelProto, what: str) -> None:
    """``onnx.checker`` (full check) and strict shape inference; raises naming ``what``."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        raise InputError(f"{what}: the quantized graph does not pass onnx.checker / shape inference: {e}") from e


def quantize_graph(model: onnx.ModelProto, input_name: str, samples: Sequence[np.ndarray], *, what: str) -> onnx.ModelProto:
    """One VQ graph (fp32, as :func:`~.vq.build_vq_graphs` writes it) as an INT8 QDQ graph.

    ``samples``: the calibration inputs of ``input_name`` (same order, same result).
    Metadata is carried over and ``vq_precision`` set to ``int8``.
    """
    q = _ort_quantization()
    if not samples:
        raise InputError(f"{what}: no calibration samples")
    weight_only = weight_only_nodes(model)
    with tempfile.TemporaryDirectory(prefix="bimaco-quant-") as tmp, _quiet_root_logger():
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(src))
        q.quantize_static(
            str(src), str(dst), _Samples(input_name, samples),
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=weight_only,
            calibrate_method=q.CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        out = onnx.load(str(dst))
    _int8_weight_only(out, weight_only)
    toposort(out.graph)
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(vq_precision="int8", float_dtype="float32", quantization=_recipe_text(len(samples)))
    del out.metadata_props[:]
    helper.set_model_props(out, meta)
    # the quantizer may raise the opset or IR version; keep what runtimes (TensorRT 10.3) read
    out.producer_name = "bimaco-deploy"
    check_quantized(out, what)
    return out


def _recipe_text(n: int) -> str:
    import json

    return json.dumps({**RECIPE, "samples": n})


def quantize_vq(
    encoder: onnx.ModelProto,
    decoder: onnx.ModelProto,
    encoder_samples: Sequence[np.ndarray],
    *,
    say=None,
    threads: Optional[int] = None,
) -> Tuple[onnx.ModelProto, onnx.ModelProto, Dict[str, Any]]:
    """(encoder, decoder) as INT8 QDQ graphs, and a summary of the calibration.

    ``encoder_samples``: images [1, 3, H, W] as the encoder sees them (LR in [-1, 1],
    reflect-padded, 4x bicubic). The decoder calibrates on the latents the float32
    ``encoder`` makes from them (its graph snaps them to the codebook first, as inference does).
    """
    say = say or (lambda _msg: None)
    sess = _session(encoder, threads)
    latents = [sess.run(None, {"image": np.ascontiguousarray(x, np.float32)})[0] for x in encoder_samples]
    say(f"calibrating the encoder on {len(encoder_samples)} samples")
    enc_q = quantize_graph(encoder, "image", encoder_samples, what="vq_encoder (int8)")
    say(f"calibrating the decoder on the {len(latents)} latents of those samples")
    dec_q = quantize_graph(decoder, "latent", latents, what="vq_decoder (int8)")
    info = {
        "recipe": RECIPE,
        "samples": len(encoder_samples),
        "sample_shapes": sorted({tuple(int(d) for d in x.shape) for x in encoder_samples}),
        "activation_scales": {"encoder": activation_scales(enc_q), "decoder": activation_scales(dec_q)},
    }
    return enc_q, dec_q, info


def activation_scales(model: onnx.ModelProto) -> Dict[str, float]:
    """Scale of every activation QuantizeLinear of a QDQ graph (what calibration decided), by tensor."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits:
            out[n.input[0]] = float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
    return dict(sorted(out.items()))


def int8_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers of ``model`` (the deployed weight size)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else numpy_helper.to_array(t).nbytes
    return total


__all__ = ["RECIPE", "RECIPE_VERSION", "WEIGHT_ONLY", "activation_scales", "check_quantized", "int8_weight_bytes",
           "QDQ_DISABLED_OPTIMIZERS", "quantize_graph", "quantize_vq", "weight_only_nodes"]
