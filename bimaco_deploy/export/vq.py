"""The VQ-f4 autoencoder as two ONNX graphs: ``vq_encoder.onnx`` and ``vq_decoder.onnx``.

Encoder: image [N, 3, H, W] -> ``quant_conv(encoder(image))``, the continuous
latent (the sampler never quantizes on the encode side).
Decoder: latent -> nearest-codebook snapping (``z + (e_idx - z)``, first index
on ties, the original's |z|^2 + |e|^2 - 2 z.e distance) -> ``post_quant_conv``
-> decoder. Inputs and outputs are float32; ``compute_dtype`` float16 casts
inside, as the sampler does with ``use_fp16: true``. Written by hand like the
UNet graph (see :mod:`.unet_graph`), all shapes dynamic.

:func:`vq_graphs` makes the pair at one ``--vq-precision`` (fp32, fp16, or int8: the
float32 graphs quantized by :mod:`.vq_quant`) and records it in the metadata
(``vq_precision``), which the backends read.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import ConfigError, InputError
from ..models.autoencoder import ATTN_SCORE_BYTES
from ..models.config import VQConfig
from .graph_builder import GraphBuilder
from .layer_params import StateReader

VQ_GN_EPS = 1e-6


#: How the attention blocks are written: ``chunked`` (a Loop over query chunks: bounded memory,
#: for ONNX Runtime) or ``plain`` (one [HW x HW] matrix: for TensorRT, which fuses attention).
ATTENTION_FORMS = ("chunked", "plain")


class _VQWriter:
    def __init__(self, cfg: VQConfig, reader: StateReader, compute_dtype: np.dtype, attention: str = "chunked",
                 score_bytes: int = ATTN_SCORE_BYTES):
        if attention not in ATTENTION_FORMS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
        self.cfg = cfg
        self.reader = reader
        self.gb = GraphBuilder(compute_dtype)
        self.attention = attention
        self.score_bytes = int(score_bytes)

    def conv(self, prefix: str, x: str, k: int, stride: int = 1, pad: int = 0) -> str:
        w = self.reader.take(prefix + ".weight")
        b = self.reader.take(prefix + ".bias")
        if w.ndim != 4 or w.shape[2:] != (k, k):
            raise ValueError(f"{prefix}.weight has shape {list(w.shape)}, expected a {k}x{k} kernel")
        gb = self.gb
        return gb.op(
            "Conv", [x, gb.weight(prefix + ".weight", w), gb.weight(prefix + ".bias", b)],
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, name=prefix,
        )

    def norm(self, prefix: str, x: str) -> str:
        gb = self.gb
        gamma = self.reader.take(prefix + ".weight")
        beta = self.reader.take(prefix + ".bias")
        grouped = gb.reshape(x, [0, 32, -1], name=f"{prefix}/group")
        normed = gb.op(
            "InstanceNormalization", [grouped, gb.fconst(np.ones(32)), gb.fconst(np.zeros(32))], epsilon=VQ_GN_EPS, name=prefix
        )
        back = gb.reshape(normed, gb.shape_of(x), name=f"{prefix}/ungroup")
        y = gb.op("Mul", [back, gb.weight(prefix + ".weight", gamma.reshape(-1, 1, 1))], name=f"{prefix}/scale")
        return gb.op("Add", [y, gb.weight(prefix + ".bias", beta.reshape(-1, 1, 1))], name=f"{prefix}/shift")

    def swish(self, x: str, name: str) -> str:
        return self.gb.op("Mul", [x, self.gb.op("Sigmoid", [x], name=f"{name}/sigmoid")], name=f"{name}/swish")

    def resblock(self, prefix: str, x: str) -> str:
        h = self.conv(prefix + ".conv1", self.swish(self.norm(prefix + ".norm1", x), prefix + ".act1"), 3, pad=1)
        h = self.conv(prefix + ".conv2", self.swish(self.norm(prefix + ".norm2", h), prefix + ".act2"), 3, pad=1)
        if self.reader.has(prefix + ".nin_shortcut.weight"):
            x = self.conv(prefix + ".nin_shortcut", x, 1)
        return self.gb.op("Add", [x, h], name=f"{prefix}/residual")

    def attn(self, prefix: str, x: str) -> str:
        gb = self.gb
        hn = self.norm(prefix + ".norm", x)
        q, k, v = (self.conv(f"{prefix}.{n}", hn, 1) for n in "qkv")
        c = int(self.reader.state[prefix + ".q.weight"].shape[0])
        qf = gb.op("Transpose", [gb.reshape(q, [0, 0, -1], name=f"{prefix}/q_flat")], perm=[0, 2, 1], name=f"{prefix}/q_t")
        kf = gb.reshape(k, [0, 0, -1], name=f"{prefix}/k_flat")
        vf = gb.reshape(v, [0, 0, -1], name=f"{prefix}/v_flat")
        if self.attention == "plain":
            out = self._attn_plain(prefix, qf, kf, vf, c)
        else:
            out = self._attn_chunked(prefix, qf, kf, vf, c)
        out = gb.reshape(out, gb.shape_of(x), name=f"{prefix}/unflat")
        return gb.op("Add", [x, self.conv(prefix + ".proj_out", out, 1)], name=f"{prefix}/residual")

    def _attn_plain(self, prefix: str, qf: str, kf: str, vf: str, c: int) -> str:
        """The original's formula on the whole [HW x HW] matrix (for TensorRT, which fuses it)."""
        gb = self.gb
        w = gb.op("Mul", [gb.op("MatMul", [qf, kf], name=f"{prefix}/qk"), gb.fconst(np.float32(int(c) ** -0.5))], name=f"{prefix}/scaled")
        w = gb.op("Softmax", [w], axis=2, name=f"{prefix}/softmax")
        return gb.op("MatMul", [vf, gb.op("Transpose", [w], perm=[0, 2, 1], name=f"{prefix}/w_t")], name=f"{prefix}/wv")

    def _attn_chunked(self, prefix: str, qf: str, kf: str, vf: str, c: int) -> str:
        """Exact softmax per query row, in chunks of query rows inside a ``Loop``: at most
        :data:`~bimaco_deploy.models.autoencoder.ATTN_SCORE_BYTES` of scores exist at a time,
        with the torch model's chunk size (:func:`~bimaco_deploy.models.autoencoder.attention_chunk_rows`).

        The queries are zero-padded to whole chunks so that every iteration emits the same
        shape (a Loop's scan output is a stack); the padded rows are sliced off afterwards.
        """
        gb = self.gb
        elem = np.dtype(gb.float_dtype).itemsize
        n = gb.shape_of(qf, 1, 2)  # [1]: positions
        budget = gb.i64([max(1, self.score_bytes // elem)])
        rows = gb.op("Max", [gb.op("Min", [n, gb.op("Div", [budget, n], name=f"{prefix}/budget_rows")], name=f"{prefix}/rows_min"),
                             gb.i64([1])], name=f"{prefix}/rows")
        chunks = gb.op("Div", [gb.op("Sub", [gb.op("Add", [n, rows], name=f"{prefix}/n_plus_rows"), gb.i64([1])], name=f"{prefix}/ceil"),
                               rows], name=f"{prefix}/chunks")
        pad = gb.op("Sub", [gb.op("Mul", [chunks, rows], name=f"{prefix}/padded_n"), n], name=f"{prefix}/pad_rows")
        qpad = gb.op("Pad", [qf, gb.concat_i64([[0, 0, 0, 0], pad, [0]])], mode="constant", name=f"{prefix}/q_pad")
        vt = gb.op("Transpose", [vf], perm=[0, 2, 1], name=f"{prefix}/v_t")  # [b, hw(key), c]

        body = GraphBuilder(gb.float_dtype, prefix=f"{prefix}/chunk/")
        it = body.add_input(f"{prefix}/chunk/iter", TensorProto.INT64, [])
        cond = body.add_input(f"{prefix}/chunk/cond", TensorProto.BOOL, [])
        start = body.op("Mul", [body.op("Unsqueeze", [it, body.i64([0])]), rows], name="start")
        qc = body.op("Slice", [qpad, start, body.op("Add", [start, rows], name="end"), body.i64([1])])
        s = body.op("Mul", [body.op("MatMul", [qc, kf], name="qk"), body.fconst(np.float32(int(c) ** -0.5))], name="scaled")
        p = body.op("Softmax", [s], axis=2, name="softmax")
        oc = body.op("MatMul", [p, vt], name="wv")  # [b, rows, c]
        body.op("Identity", [cond], outputs=[f"{prefix}/chunk/cond_out"])
        body.op("Identity", [oc], outputs=[f"{prefix}/chunk/out"])
        body.add_output(f"{prefix}/chunk/cond_out", TensorProto.BOOL, [])
        body.add_output(f"{prefix}/chunk/out", body.float_type, None)
        graph = onnx.helper.make_graph(body.nodes, f"{prefix}/chunk", body.inputs, body.outputs, initializer=body.initializers)

        trips = gb.op("Squeeze", [chunks, gb.i64([0])])
        stacked = gb.op("Loop", [trips, gb.const(np.array(True))], body=graph, name=f"{prefix}/chunks_loop")  # [chunks, b, rows, c]
        out = gb.op("Transpose", [stacked], perm=[1, 0, 2, 3], name=f"{prefix}/unstack")
        out = gb.reshape(out, [0, -1, c], name=f"{prefix}/rows_flat")
        out = gb.op("Slice", [out, gb.i64([0]), n, gb.i64([1])])
        return gb.op("Transpose", [out], perm=[0, 2, 1], name=f"{prefix}/out_t")  # [b, c, hw]

    def mid(self, prefix: str, x: str) -> str:
        x = self.resblock(prefix + ".block_1", x)
        x = self.attn(prefix + ".attn_1", x)
        return self.resblock(prefix + ".block_2", x)

    def level_blocks(self, prefix: str, x: str, n_blocks: int) -> str:
        for j in range(n_blocks):
            x = self.resblock(f"{prefix}.block.{j}", x)
            if self.reader.has(f"{prefix}.attn.{j}.q.weight"):
                x = self.attn(f"{prefix}.attn.{j}", x)
        return x

    # ------------------------------------------------------------------ graphs
    def _io(self, name: str, channels: int) -> Tuple[str, str]:
        gb = self.gb
        x = gb.add_input(name, TensorProto.FLOAT, ["N", channels, "H", "W"])
        if gb.float_dtype == np.float16:
            x = gb.op("Cast", [x], to=TensorProto.FLOAT16, name="input_to_f16")
        return x, name

    def _finish(self, y: str, out_name: str, channels: int, graph_name: str) -> onnx.ModelProto:
        gb = self.gb
        if gb.float_dtype == np.float16:
            gb.op("Cast", [y], outputs=[out_name], to=TensorProto.FLOAT, name="output_to_f32")
        else:
            gb.op("Identity", [y], outputs=[out_name], name="output")
        gb.add_output(out_name, TensorProto.FLOAT, ["N", channels, "H_out", "W_out"])
        return gb.make_model(graph_name)

    def encoder(self) -> onnx.ModelProto:
        cfg, gb = self.cfg, self.gb
        h, _ = self._io("image", cfg.in_channels)
        h = self.conv("encoder.conv_in", h, 3, pad=1)
        n = len(cfg.ch_mult)
        for level in range(n):
            h = self.level_blocks(f"encoder.down.{level}", h, cfg.num_res_blocks)
            if level != n - 1:
                # zero-pad right and bottom by one, then a stride-2 conv without padding
                padded = gb.op("Pad", [h, gb.i64([0, 0, 0, 0, 0, 0, 1, 1])], mode="constant", name=f"encoder.down.{level}.downsample/pad")
                h = self.conv(f"encoder.down.{level}.downsample.conv", padded, 3, stride=2)
        h = self.mid("encoder.mid", h)
        h = self.conv("encoder.conv_out", self.swish(self.norm("encoder.norm_out", h), "encoder.act_out"), 3, pad=1)
        h = self.conv("quant_conv", h, 1)
        return self._finish(h, "latent", cfg.embed_dim, "vq_encoder")

    def quantize(self, z: str) -> str:
        """Nearest codebook vector per latent pixel, with the original's distance and z + (e - z)."""
        gb = self.gb
        e = self.reader.take("quantize.embedding.weight", (self.cfg.n_embed, self.cfg.embed_dim))
        d = self.cfg.embed_dim
        emb = gb.weight("quantize.embedding.weight", e)
        zl = gb.op("Transpose", [z], perm=[0, 2, 3, 1], name="quantize/nhwc")
        flat = gb.reshape(zl, [-1, d], name="quantize/flat")
        two = gb.fconst(2.0)
        z2 = gb.op("ReduceSum", [gb.op("Mul", [flat, flat], name="quantize/z_sq"), gb.i64([1])], keepdims=1, name="quantize/z_norm")
        e2 = gb.op("ReduceSum", [gb.op("Mul", [emb, emb], name="quantize/e_sq"), gb.i64([1])], keepdims=0, name="quantize/e_norm")
        ze = gb.op("MatMul", [flat, gb.op("Transpose", [emb], perm=[1, 0], name="quantize/e_t")], name="quantize/z_dot_e")
        dist = gb.op("Sub", [gb.op("Add", [z2, e2], name="quantize/norms"), gb.op("Mul", [ze, two], name="quantize/two_dot")], name="quantize/dist")
        if gb.float_dtype == np.float16:
            dist = gb.op("Cast", [dist], to=TensorProto.FLOAT, name="quantize/dist_f32")  # exact widening; same argmin
        idx = gb.op("ArgMin", [dist], axis=1, keepdims=0, select_last_index=0, name="quantize/argmin")
        chosen = gb.op("Gather", [emb, idx], axis=0, name="quantize/lookup")
        zq = gb.op("Add", [flat, gb.op("Sub", [chosen, flat], name="quantize/delta")], name="quantize/straight_through")
        zq = gb.reshape(zq, gb.shape_of(zl), name="quantize/unflat")
        return gb.op("Transpose", [zq], perm=[0, 3, 1, 2], name="quantize/nchw")

    def decoder(self) -> onnx.ModelProto:
        cfg = self.cfg
        z, _ = self._io("latent", cfg.embed_dim)
        h = self.quantize(z)
        h = self.conv("post_quant_conv", h, 1)
        h = self.conv("decoder.conv_in", h, 3, pad=1)
        h = self.mid("decoder.mid", h)
        n = len(cfg.ch_mult)
        gb = self.gb
        for level in reversed(range(n)):
            h = self.level_blocks(f"decoder.up.{level}", h, cfg.num_res_blocks + 1)
            if level != 0:
                h = gb.op(
                    "Resize", [h, gb.const(np.zeros(0, np.float32)), gb.const(np.array([1, 1, 2, 2], np.float32))],
                    mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                    name=f"decoder.up.{level}.upsample/resize",
                )
                h = self.conv(f"decoder.up.{level}.upsample.conv", h, 3, pad=1)
        h = self.conv("decoder.conv_out", self.swish(self.norm("decoder.norm_out", h), "decoder.act_out"), 3, pad=1)
        return self._finish(h, "image", cfg.out_ch, "vq_decoder")


def build_vq_graphs(
    cfg: VQConfig, state: Mapping[str, np.ndarray], *, compute_dtype: type = np.float32, source: str = "autoencoder",
    attention: str = "chunked", score_bytes: int = ATTN_SCORE_BYTES,
) -> Tuple[onnx.ModelProto, onnx.ModelProto]:
    """(encoder, decoder) ONNX models of the VQ autoencoder from its config and state dict.

    ``attention``: ``"chunked"`` (default) never holds more than
    :data:`~bimaco_deploy.models.autoencoder.ATTN_SCORE_BYTES` of attention scores;
    ``"plain"`` writes the original's single matrix, for TensorRT (which fuses attention
    into one kernel that does not materialise it). ``score_bytes``: the chunked form's
    budget (smaller values force more chunks, for tests).
    """
    reader = StateReader(state, source)
    enc = _VQWriter(cfg, reader, np.dtype(compute_dtype), attention, score_bytes).encoder()
    dec = _VQWriter(cfg, reader, np.dtype(compute_dtype), attention, score_bytes).decoder()
    reader.check_all_used()
    return enc, dec


#: The precisions ONNX graphs are written in (bf16 runs in torch only).
ONNX_VQ_PRECISIONS = ("fp32", "fp16", "int8")


def vq_graphs(
    cfg: VQConfig,
    state: Mapping[str, np.ndarray],
    precision: str = "fp32",
    *,
    samples: Optional[Sequence[np.ndarray]] = None,
    attention: str = "chunked",
    source: str = "autoencoder",
    say: Optional[Callable[[str], None]] = None,
) -> Tuple[onnx.ModelProto, onnx.ModelProto, Dict[str, Any]]:
    """(encoder, decoder, info) at ``precision``, with ``vq_precision`` and ``downscale`` in the metadata.

    ``int8`` needs ``samples``: calibration images as the encoder sees them (see
    :func:`bimaco_deploy.pipeline.calibration.calibration_samples`); ``info`` then holds
    the calibration summary.
    """
    if precision not in ONNX_VQ_PRECISIONS:
        raise ConfigError(
            f"--vq-precision {precision}: the exported VQ graphs come in {', '.join(ONNX_VQ_PRECISIONS)} "
            "(bf16 runs in torch: --backend torch)"
        )
    info: Dict[str, Any] = {"precision": precision}
    if precision == "int8":
        from .vq_quant import quantize_vq

        if not samples:
            raise InputError("--vq-precision int8 needs calibration images (--calib DIR, default calib/calibration)")
        enc, dec = build_vq_graphs(cfg, state, compute_dtype=np.float32, source=source, attention=attention)
        _tag(enc, cfg, "fp32")
        _tag(dec, cfg, "fp32")
        enc, dec, calib = quantize_vq(enc, dec, samples, say=say)
        info["calibration"] = calib
    else:
        enc, dec = build_vq_graphs(cfg, state, compute_dtype=np.float16 if precision == "fp16" else np.float32,
                                   source=source, attention=attention)
    for m in (enc, dec):
        _tag(m, cfg, precision)
    return enc, dec, info


def _tag(model: onnx.ModelProto, cfg: VQConfig, precision: str) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(vq_precision=precision, downscale=str(cfg.downscale))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)


def graph_precision(model_or_meta: Any) -> str:
    """The ``vq_precision`` a VQ graph records (graphs written before it existed: from float_dtype)."""
    meta = model_or_meta if isinstance(model_or_meta, dict) else {p.key: p.value for p in model_or_meta.metadata_props}
    if "vq_precision" in meta:
        return meta["vq_precision"]
    return "fp16" if meta.get("float_dtype") == "float16" else "fp32"
