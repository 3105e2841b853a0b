"""The binarized Swin-UNet written as one ONNX graph, straight from config + state dict.

The graph is written by hand, following the module tree of the spec
(``shared/spec/bimacosr.md`` sections b-d) and reading every tensor through a
:class:`~.layer_params.StateReader`, so a key nobody consumed is an error
(unknown layer type, or a config that does not match the checkpoint). Every
shape is dynamic in batch, H and W: the Swin window partition, the cyclic
shift and the quirky attention mask (only the last row of windows is masked,
by within-window column) are computed from the run-time H and W.

Inputs: ``x`` [N, C_out, H, W], ``timesteps`` int64 [N], ``lq`` [N, C_in - C_out, H, W];
output ``out`` [N, C_out, H, W]. H and W must be multiples of
``UNetConfig.size_multiple`` (the runtime checks this before calling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import CheckpointError, ConfigError
from ..models.config import UNetConfig
from .graph_builder import GraphBuilder
from .layer_params import StateReader, read_binary_conv, read_binary_linear
from .onnx_nodes import emit_binary_conv, emit_binary_linear

GN_GROUPS = 32
GN_EPS = 1e-5
MASK_VALUE = -100.0


@dataclass
class BinaryLayerRecord:
    """One binary layer as it appears in the graph, in execution order."""

    layer: object  # BinaryConvLayer | BinaryLinearLayer
    input_name: str
    output_name: str
    x_rank: int

    @property
    def name(self) -> str:
        return self.layer.name  # type: ignore[attr-defined]


@dataclass
class UNetGraph:
    """The written graph and what the report needs to know about it."""

    model: onnx.ModelProto
    layers: List[BinaryLayerRecord]
    dead_keys: List[str]
    full_precision_params: int
    extra: Dict[str, object] = field(default_factory=dict)


class _UNetWriter:
    def __init__(
        self,
        cfg: UNetConfig,
        state: Mapping[str, np.ndarray],
        *,
        portable: bool,
        float_dtype: np.dtype,
        expose_binary_inputs: bool,
        source: str,
        float_model: bool = False,
        fuse_side_branches: bool = True,
    ):
        if cfg.binary is None and not float_model:
            raise ConfigError("the config describes a full-precision UNet; only binarized (BiMaCoSR) configs are exported")
        if float_model and cfg.binary is not None:
            raise ConfigError("a float baseline graph needs the float twin of the config (models.float_twin)")
        if not cfg.cond_lq:
            raise ConfigError("model.params.cond_lq must be true (the one-step pipeline conditions on lq)")
        if not cfg.use_scale_shift_norm:
            raise ConfigError("model.params.use_scale_shift_norm: false is not supported")
        self.cfg = cfg
        self.reader = StateReader(state, source)
        self.gb = GraphBuilder(float_dtype)
        self.portable = portable
        self.fuse = fuse_side_branches and not portable
        self.expose = expose_binary_inputs
        self.float_model = float_model  # every "binary" slot as a plain Conv / MatMul (the float baseline)
        self.records: List[BinaryLayerRecord] = []
        self.fp_params = 0  # full-precision parameters kept as such (GN, first/last conv, tables)
        self._emb_silu: Optional[str] = None

    # ------------------------------------------------------------------ small pieces
    def _bconv(self, prefix: str, x: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        if self.float_model:
            return self._fp_conv(prefix, x, cin, cout, k, stride)
        layer = read_binary_conv(self.reader, prefix, cin, cout, k, stride, k // 2)
        y = emit_binary_conv(self.gb, layer, x, portable=self.portable, fuse=self.fuse)
        self.records.append(BinaryLayerRecord(layer, x, y, 4))
        return y

    def _blinear(self, prefix: str, x: str, kin: int, kout: int, rank: int) -> str:
        if self.float_model:
            return self._fp_linear(prefix, x, kin, kout)
        layer = read_binary_linear(self.reader, prefix, kin, kout)
        y = emit_binary_linear(self.gb, layer, x, portable=self.portable, x_rank=rank, fuse=self.fuse)
        self.records.append(BinaryLayerRecord(layer, x, y, rank))
        return y

    def _fp_conv(self, prefix: str, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        w = self.reader.take(prefix + ".weight", (cout, cin, k, k))
        b = self.reader.take(prefix + ".bias", (cout,))
        self.fp_params += w.size + b.size
        gb = self.gb
        return gb.op(
            "Conv", [x, gb.weight(prefix + ".weight", w), gb.weight(prefix + ".bias", b)],
            kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], name=prefix,
        )

    def _fp_linear(self, prefix: str, x: str, kin: int, kout: int) -> str:
        w = self.reader.take(prefix + ".weight", (kout, kin))
        b = self.reader.take(prefix + ".bias", (kout,))
        self.fp_params += w.size + b.size
        gb = self.gb
        y = gb.op("MatMul", [x, gb.weight(prefix + ".weight_t", np.ascontiguousarray(w.T))], name=f"{prefix}/matmul")
        return gb.op("Add", [y, gb.weight(prefix + ".bias", b)], name=prefix)

    def _silu(self, x: str, name: str) -> str:
        return self.gb.op("Mul", [x, self.gb.op("Sigmoid", [x], name=f"{name}/sigmoid")], name=f"{name}/silu")

    def _group_norm(self, prefix: str, x: str, channels: int) -> str:
        """GroupNorm32: 32 groups, eps 1e-5, evaluated in float32 (the original upcasts)."""
        gb = self.gb
        gamma = self.reader.take(prefix + ".weight", (channels,))
        beta = self.reader.take(prefix + ".bias", (channels,))
        self.fp_params += 2 * channels
        fp16 = gb.float_dtype == np.float16
        xf = gb.op("Cast", [x], to=TensorProto.FLOAT, name=f"{prefix}/to_f32") if fp16 else x
        grouped = gb.reshape(xf, [0, GN_GROUPS, -1], name=f"{prefix}/group")
        normed = gb.op(
            "InstanceNormalization",
            [grouped, gb.const(np.ones(GN_GROUPS, np.float32)), gb.const(np.zeros(GN_GROUPS, np.float32))],
            epsilon=GN_EPS, name=f"{prefix}/norm",
        )
        back = gb.reshape(normed, gb.shape_of(xf), name=f"{prefix}/ungroup")
        # stored in the graph dtype (float16 exports: as a half model would hold them), applied in float32
        g = gb.weight(prefix + ".weight", gamma.reshape(-1, 1, 1))
        b = gb.weight(prefix + ".bias", beta.reshape(-1, 1, 1))
        if fp16:
            g = gb.op("Cast", [g], to=TensorProto.FLOAT, name=f"{prefix}/weight_f32")
            b = gb.op("Cast", [b], to=TensorProto.FLOAT, name=f"{prefix}/bias_f32")
        y = gb.op("Add", [gb.op("Mul", [back, g], name=f"{prefix}/scale"), b], name=f"{prefix}/shift")
        return gb.op("Cast", [y], to=gb.float_type, name=f"{prefix}/to_f16") if fp16 else y

    # ------------------------------------------------------------------ blocks
    def _timestep_embedding(self, t: str) -> str:
        import torch  # the frequencies are computed by torch itself so they match the reference bit for bit

        gb = self.gb
        dim = self.cfg.model_channels
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32) / half).numpy()
        tf = gb.op("Cast", [t], to=TensorProto.FLOAT, name="timestep/float")
        args = gb.op("Mul", [gb.op("Unsqueeze", [tf, gb.i64([1])], name="timestep/col"), gb.const(freqs[None, :])], name="timestep/args")
        emb = gb.op("Concat", [gb.op("Cos", [args], name="timestep/cos"), gb.op("Sin", [args], name="timestep/sin")], axis=-1, name="timestep/embedding")
        if dim % 2:
            raise ConfigError(f"model_channels {dim} must be even for the timestep embedding")
        if gb.float_dtype == np.float16:
            emb = gb.op("Cast", [emb], to=gb.float_type, name="timestep/to_f16")
        ted = self.cfg.time_embed_dim
        h = self._blinear("time_embed.0", emb, dim, ted, 2)
        h = self._silu(h, "time_embed.1")
        return self._blinear("time_embed.2", h, ted, ted, 2)

    def _resblock(self, prefix: str, x: str, cin: int, cout: int) -> str:
        gb = self.gb
        h = self._group_norm(prefix + ".in_layers.0", x, cin)
        h = self._silu(h, prefix + ".in_layers.1")
        h = self._bconv(prefix + ".in_layers.2", h, cin, cout, 3)
        assert self._emb_silu is not None
        e = self._blinear(prefix + ".emb_layers.1", self._emb_silu, self.cfg.time_embed_dim, 2 * cout, 2)
        e = gb.op("Unsqueeze", [e, gb.i64([2, 3])], name=f"{prefix}/emb_4d")
        scale, shift = gb.op("Split", [e, gb.i64([cout, cout])], axis=1, outputs=2, name=f"{prefix}/emb_chunk")
        h = self._group_norm(prefix + ".out_layers.0", h, cout)
        one_plus = gb.op("Add", [scale, gb.fconst(1.0)], name=f"{prefix}/one_plus_scale")
        h = gb.op("Add", [gb.op("Mul", [h, one_plus], name=f"{prefix}/scale"), shift], name=f"{prefix}/shift")
        h = self._silu(h, prefix + ".out_layers.1")
        h = self._bconv(prefix + ".out_layers.3", h, cout, cout, 3)
        skip = x if cin == cout else self._bconv(prefix + ".skip_connection", x, cin, cout, 1)
        return gb.op("Add", [skip, h], name=f"{prefix}/residual")

    def _rel_bias(self, prefix: str, window: int, heads: int) -> str:
        """[heads, T, T] relative-position bias: the table is stored, the lookup runs at load time."""
        gb = self.gb
        t = window * window
        table = self.reader.take(prefix + ".relative_position_bias_table", ((2 * window - 1) ** 2, heads))
        self.fp_params += table.size
        index = self.reader.take(prefix + ".relative_position_index", (t, t)).astype(np.int64)
        if index.min() < 0 or index.max() >= table.shape[0]:
            raise CheckpointError(f"{prefix}.relative_position_index points outside its table of {table.shape[0]} rows")
        idx = gb.const(index.reshape(-1).astype(np.int32))  # shared by every block with this window
        rows = gb.op("Gather", [gb.weight(prefix + ".relative_position_bias_table", table), idx], axis=0, name=f"{prefix}/rel_gather")
        rows = gb.reshape(rows, [t, t, heads], name=f"{prefix}/rel_grid")
        return gb.op("Transpose", [rows], perm=[2, 0, 1], name=f"{prefix}/rel_bias")

    def _roll(self, x: str, shift: int, axes: Tuple[int, int], name: str) -> str:
        """torch.roll(x, (shift, shift), axes) for any run-time extent (shift may be negative)."""
        gb = self.gb
        for ax in axes:
            # out[i] = in[(i - shift) mod L]: the last `shift` elements move to the front
            cut = -shift
            head = gb.op("Slice", [x, gb.i64([cut]), gb.i64([2**62]), gb.i64([ax])], name=f"{name}/roll{ax}_tail")
            tail = gb.op("Slice", [x, gb.i64([0]), gb.i64([cut]), gb.i64([ax])], name=f"{name}/roll{ax}_head")
            x = gb.op("Concat", [head, tail], axis=ax, name=f"{name}/roll{ax}")
        return x

    def _swin_block(self, prefix: str, x: str, embed: int, heads: int, window: int, shift: int) -> str:
        gb = self.gb
        hd = embed // heads
        t = window * window
        self.reader.drop(prefix + ".attn_mask")  # never read by the original forward (spec d)
        h = self._group_norm(prefix + ".norm1", x, embed)
        nhwc = gb.op("Transpose", [h], perm=[0, 2, 3, 1], name=f"{prefix}/to_nhwc")
        if shift:
            nhwc = self._roll(nhwc, -shift, (1, 2), f"{prefix}/shift")
        shape = gb.shape_of(x)  # [N, E, H, W]
        n = gb.op("Slice", [shape, gb.i64([0]), gb.i64([1]), gb.i64([0])], name=f"{prefix}/dim_n")
        hh = gb.op("Slice", [shape, gb.i64([2]), gb.i64([3]), gb.i64([0])], name=f"{prefix}/dim_h")
        ww = gb.op("Slice", [shape, gb.i64([3]), gb.i64([4]), gb.i64([0])], name=f"{prefix}/dim_w")
        nwh = gb.op("Div", [hh, gb.i64([window])], name=f"{prefix}/win_rows")
        nww = gb.op("Div", [ww, gb.i64([window])], name=f"{prefix}/win_cols")
        split = gb.reshape(nhwc, gb.concat_i64([n, nwh, [window], nww, [window, embed]]), name=f"{prefix}/win_split")
        win = gb.op("Transpose", [split], perm=[0, 1, 3, 2, 4, 5], name=f"{prefix}/win_order")
        tokens = gb.reshape(win, [-1, t, embed], name=f"{prefix}/windows")

        # window attention
        qkv = self._blinear(prefix + ".attn.qkv", tokens, embed, 3 * embed, 3)
        qkv = gb.reshape(qkv, [0, 0, 3, heads, hd], name=f"{prefix}/qkv_split")
        qkv = gb.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4], name=f"{prefix}/qkv_heads")
        q, k, v = (gb.op("Gather", [qkv, gb.i64(i)], axis=0, name=f"{prefix}/{nm}") for i, nm in enumerate("qkv"))
        q = gb.op("Mul", [q, gb.fconst(np.float32(hd ** -0.5))], name=f"{prefix}/q_scale")
        kt = gb.op("Transpose", [k], perm=[0, 1, 3, 2], name=f"{prefix}/k_t")
        attn = gb.op("MatMul", [q, kt], name=f"{prefix}/scores")
        bias = self._rel_bias(prefix + ".attn", window, heads)
        if gb.float_dtype == np.float16:
            bias = gb.op("Cast", [bias], to=gb.float_type, name=f"{prefix}/rel_bias_f16")
        attn = gb.op("Add", [attn, bias], name=f"{prefix}/add_rel_bias")
        if shift:
            attn = self._add_shift_mask(prefix, attn, nwh, nww, heads, window, shift)
        attn = gb.op("Softmax", [attn], axis=-1, name=f"{prefix}/softmax")
        out = gb.op("MatMul", [attn, v], name=f"{prefix}/attn_v")
        out = gb.op("Transpose", [out], perm=[0, 2, 1, 3], name=f"{prefix}/heads_merge")
        out = gb.reshape(out, [0, 0, embed], name=f"{prefix}/heads_concat")
        out = self._blinear(prefix + ".attn.proj", out, embed, embed, 3)

        # merge windows back, undo the shift
        grid = gb.reshape(out, gb.concat_i64([[-1], nwh, nww, [window, window, embed]]), name=f"{prefix}/win_grid")
        grid = gb.op("Transpose", [grid], perm=[0, 1, 3, 2, 4, 5], name=f"{prefix}/win_unorder")
        merged = gb.reshape(grid, gb.concat_i64([n, hh, ww, [embed]]), name=f"{prefix}/win_merge")
        if shift:
            merged = self._roll(merged, shift, (1, 2), f"{prefix}/unshift")
        attn_nchw = gb.op("Transpose", [merged], perm=[0, 3, 1, 2], name=f"{prefix}/to_nchw")
        x = gb.op("Add", [x, attn_nchw], name=f"{prefix}/attn_residual")

        # MLP (1x1 binary convs, exact GELU)
        mlp_hidden = int(embed * self.cfg.mlp_ratio)
        h = self._group_norm(prefix + ".norm2", x, embed)
        h = self._bconv(prefix + ".mlp.fc1", h, embed, mlp_hidden, 1)
        h = self._gelu(h, prefix + ".mlp.act")
        h = self._bconv(prefix + ".mlp.fc2", h, mlp_hidden, embed, 1)
        return gb.op("Add", [x, h], name=f"{prefix}/mlp_residual")

    def _gelu(self, x: str, name: str) -> str:
        """Exact (erf) GELU as torch writes it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
        gb = self.gb
        e = gb.op("Erf", [gb.op("Mul", [x, gb.fconst(np.float32(1 / math.sqrt(2)))], name=f"{name}/scaled")], name=f"{name}/erf")
        half_x = gb.op("Mul", [x, gb.fconst(0.5)], name=f"{name}/half")
        return gb.op("Mul", [half_x, gb.op("Add", [e, gb.fconst(1.0)], name=f"{name}/one_plus")], name=f"{name}/gelu")

    def _add_shift_mask(self, prefix: str, attn: str, nwh: str, nww: str, heads: int, window: int, shift: int) -> str:
        """Add the original's effective mask (spec d): -100 between tokens on different
        sides of within-window column ``window - shift``, in the LAST row of windows only."""
        gb = self.gb
        t = window * window
        col = np.arange(t) % window
        side = col >= window - shift
        pattern = np.where(side[:, None] != side[None, :], MASK_VALUE, 0.0).astype(np.float32)
        rows = gb.op("Range", [gb.i64(0), gb.op("Squeeze", [nwh, gb.i64([0])], name=f"{prefix}/nwh_scalar"), gb.i64(1)], name=f"{prefix}/win_row_ids")
        last = gb.op("Sub", [nwh, gb.i64([1])], name=f"{prefix}/last_row")
        is_last = gb.op("Cast", [gb.op("Equal", [rows, last], name=f"{prefix}/is_last_row")], to=gb.float_type, name=f"{prefix}/is_last_f")
        is_last = gb.reshape(is_last, [-1, 1, 1, 1, 1], name=f"{prefix}/is_last_5d")
        mask = gb.op("Mul", [is_last, gb.fconst(pattern)], name=f"{prefix}/mask")  # [nWh, 1, 1, T, T]
        grouped = gb.reshape(attn, gb.concat_i64([[-1], nwh, nww, [heads, t, t]]), name=f"{prefix}/scores_by_window")
        masked = gb.op("Add", [grouped, mask], name=f"{prefix}/add_mask")
        return gb.reshape(masked, [-1, heads, t, t], name=f"{prefix}/scores_masked")

    def _basic_layer(self, prefix: str, x: str, channels: int, level: int) -> str:
        cfg = self.cfg
        embed = cfg.swin_embed_dim
        heads = embed // cfg.num_head_channels
        window, shift = cfg.window_at(level)
        h = self._bconv(prefix + ".patch_embed.proj", x, channels, embed, 1)
        for i in range(cfg.swin_depth):
            h = self._swin_block(f"{prefix}.blocks.{i}", h, embed, heads, window, shift if i % 2 else 0)
        return self._bconv(prefix + ".patch_unembed.proj", h, embed, channels, 1)

    def _has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix + ".") for k in self.reader.state)

    # ------------------------------------------------------------------ whole model
    def build(self) -> UNetGraph:
        cfg, gb = self.cfg, self.gb
        ft = gb.float_type
        c_lat = cfg.out_channels
        c_lq = cfg.in_channels - c_lat
        if c_lq <= 0:
            raise ConfigError(f"in_channels {cfg.in_channels} must exceed out_channels {c_lat} (x and lq are concatenated)")
        x = gb.add_input("x", ft, ["N", c_lat, "H", "W"])
        t = gb.add_input("timesteps", TensorProto.INT64, ["N"])
        lq = gb.add_input("lq", ft, ["N", c_lq, "H", "W"])

        emb = self._timestep_embedding(t)
        self._emb_silu = self._silu(emb, "emb_layers.0")

        levels = len(cfg.channel_mult)
        mc = cfg.model_channels
        h = gb.op("Concat", [x, lq], axis=1, name="concat_lq")
        h = self._fp_conv("input_blocks.0.0", h, cfg.in_channels, mc)
        stack: List[Tuple[str, int]] = [(h, mc)]
        ch = mc
        ds = cfg.image_size
        block = 1
        for level, mult in enumerate(cfg.channel_mult):
            for i in range(cfg.num_res_blocks[level]):
                out_ch = mc * mult
                h = self._resblock(f"input_blocks.{block}.0", h, ch, out_ch)
                ch = out_ch
                if ds in cfg.attention_resolutions and i == 0:
                    h = self._basic_layer(f"input_blocks.{block}.1", h, ch, level)
                stack.append((h, ch))
                block += 1
            if level != levels - 1:
                h = self._bconv(f"input_blocks.{block}.0.op", h, ch, ch, 3, stride=2)
                stack.append((h, ch))
                block += 1
                ds //= 2
        self._check_no_more("input_blocks", block)

        h = self._resblock("middle_block.0", h, ch, ch)
        h = self._basic_layer("middle_block.1", h, ch, levels - 1)
        h = self._resblock("middle_block.2", h, ch, ch)

        block = 0
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                skip, skip_ch = stack.pop()
                h = gb.op("Concat", [h, skip], axis=1, name=f"output_blocks.{block}/concat_skip")
                out_ch = mc * mult
                h = self._resblock(f"output_blocks.{block}.0", h, ch + skip_ch, out_ch)
                ch = out_ch
                sub = 1
                if ds in cfg.attention_resolutions and i == 0:
                    h = self._basic_layer(f"output_blocks.{block}.{sub}", h, ch, level)
                    sub += 1
                if level and i == cfg.num_res_blocks[level]:
                    up = gb.op(
                        "Resize", [h, gb.const(np.zeros(0, np.float32)), gb.const(np.array([1, 1, 2, 2], np.float32))],
                        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                        name=f"output_blocks.{block}.{sub}/upsample",
                    )
                    h = self._bconv(f"output_blocks.{block}.{sub}.conv", up, ch, ch, 3)
                    ds *= 2
                block += 1
        self._check_no_more("output_blocks", block)

        h = self._group_norm("out.0", h, ch)
        h = self._silu(h, "out.1")
        h = self._fp_conv("out.2", h, ch, cfg.out_channels)
        gb.op("Identity", [h], outputs=["out"], name="output")
        gb.add_output("out", ft, ["N", cfg.out_channels, "H", "W"])
        if self.expose:
            for i, rec in enumerate(self.records):
                name = f"binary_input.{i:03d}"
                gb.op("Identity", [rec.input_name], outputs=[name], name=f"expose/{rec.name}")
                gb.add_output(name, ft, None)
        self.reader.check_all_used()
        model = gb.make_model("bimacosr_unet")
        return UNetGraph(
            model=model,
            layers=self.records,
            dead_keys=sorted(self.reader.dead),
            full_precision_params=int(self.fp_params),
        )

    def _check_no_more(self, group: str, next_index: int) -> None:
        if self._has_prefix(f"{group}.{next_index}"):
            raise CheckpointError(
                f"{self.reader.source}: has '{group}.{next_index}.*' keys but the config's architecture has only "
                f"{next_index} {group} (config/checkpoint mismatch)"
            )


def build_unet_graph(
    cfg: UNetConfig,
    state: Mapping[str, np.ndarray],
    *,
    portable: bool = False,
    float_dtype: type = np.float32,
    expose_binary_inputs: bool = False,
    source: str = "checkpoint",
    float_model: bool = False,
    fuse_side_branches: bool = True,
) -> UNetGraph:
    """Write the UNet as ONNX (custom ``bimaco`` nodes, or the portable form) from config + state.

    ``state`` maps the checkpoint's keys to numpy arrays (no ``module.`` prefix).
    ``expose_binary_inputs`` adds every binary layer's input as an extra output
    ``binary_input.NNN`` (execution order), for sign-flip accounting. ``float_model``
    writes the float twin (``cfg`` without binarization, its plain Conv2d/Linear weights)
    through the same writer, so the baseline differs from the binary graph only in its
    layers: the float model "exported the same way" that benchmarks compare against.
    ``fuse_side_branches`` (custom form only): RPReLU, SMB and LRMB inside the ``bimaco``
    nodes, applied in the plugin's GEMM epilogue (see :mod:`.onnx_nodes`); False writes them
    as standard ops, as the portable form always does.
    """
    writer = _UNetWriter(
        cfg, state, portable=portable, float_dtype=np.dtype(float_dtype), expose_binary_inputs=expose_binary_inputs,
        source=source, float_model=float_model, fuse_side_branches=fuse_side_branches,
    )
    return writer.build()
