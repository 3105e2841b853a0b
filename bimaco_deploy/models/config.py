"""The model config: one home for every constant the models and the sampler use.

Reads the original BiMaCoSR / ResShift / SinSR YAML format (``model``, ``diffusion``,
``autoencoder`` sections). A missing field is an error that names the file and the
field; nothing falls back to a hidden default that the original would not use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from ..errors import ConfigError

PathLike = Union[str, Path]

#: Configs shipped inside the package, addressable by name (``--config bimacosr``).
BUILTIN_CONFIGS = {
    "bimacosr": "bimacosr.yaml",
    "bimacosr-tiny": "bimacosr_tiny.yaml",
    "resshift-float": "resshift_float.yaml",
}


def builtin_config_path(name: str) -> Path:
    """Path of a config shipped with the package."""
    return Path(__file__).resolve().parent.parent / "configs" / BUILTIN_CONFIGS[name]


class _Section:
    """Typed access to one YAML mapping with errors that name the file and the key path."""

    def __init__(self, data: Any, source: Path, where: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}")
        self.data, self.source, self.where = data, source, where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def get(self, key: str, kind: type, default: Any = ..., *, allow_none: bool = False) -> Any:
        if key not in self.data or (self.data[key] is None and not allow_none):
            if default is ...:
                raise ConfigError(f"{self.source}: missing field '{self._path(key)}'")
            return default
        value = self.data[key]
        if value is None and allow_none:
            return None
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, bool):
            raise ConfigError(f"{self.source}: '{self._path(key)}' must be an integer, got {value!r}")
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, kind):
            raise ConfigError(f"{self.source}: '{self._path(key)}' must be {kind.__name__}, got {value!r}")
        return value

    def ints(self, key: str, default: Any = ...) -> List[int]:
        value = self.get(key, list, default)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{self.source}: '{self._path(key)}' must be a list of integers, got {value!r}")
        return list(value)

    def section(self, key: str, required: bool = True) -> Optional["_Section"]:
        if not self.has(key):
            if required:
                raise ConfigError(f"{self.source}: missing section '{self._path(key)}'")
            return None
        return _Section(self.data[key], self.source, self._path(key))


@dataclass(frozen=True)
class BinaryConfig:
    """How the UNet's convolutions and linears are binarized (``model.params`` quant fields)."""

    conv_rank: int
    linear_rank: int
    conv_lrmb: bool
    conv_smb: bool
    linear_lrmb: bool
    linear_smb: bool
    # (keywords, parameter threshold in millions): a layer whose name contains a keyword
    # and that has fewer parameters than the threshold stays full precision.
    fp_conv_rules: Tuple[Tuple[Tuple[str, ...], float], ...]
    fp_linear_rules: Tuple[Tuple[Tuple[str, ...], float], ...]

    def keeps_full_precision(self, name: str, num_params: int, is_conv: bool) -> bool:
        """Whether the original's replacement leaves this layer as a float layer."""
        rules = self.fp_conv_rules if is_conv else self.fp_linear_rules
        return any(
            any(k in name for k in keywords) and num_params < threshold * 1e6 for keywords, threshold in rules
        )


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the Swin-UNet (ResShift/SinSR ``UNetModelSwin`` family)."""

    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    attention_resolutions: Tuple[int, ...]
    channel_mult: Tuple[int, ...]
    num_res_blocks: Tuple[int, ...]
    num_head_channels: int
    swin_depth: int
    swin_embed_dim: int
    window_size: int
    mlp_ratio: float
    use_scale_shift_norm: bool
    conv_resample: bool
    resblock_updown: bool
    cond_lq: bool
    binary: Optional[BinaryConfig]  # None: the full-precision model

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    @property
    def widths(self) -> Tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    def window_at(self, level: int) -> Tuple[int, int]:
        """(window, shift of the odd blocks) at a level, fixed at construction from image_size."""
        ds = self.image_size // (2**level)
        window = self.window_size
        shift = window // 2
        if ds <= window:
            window, shift = ds, 0
        return window, shift

    @property
    def size_multiple(self) -> int:
        """H and W of the latent must be multiples of this (window partition and skip concatenation)."""
        levels = len(self.channel_mult)
        m = 2 ** (levels - 1)
        for level in range(levels):
            window, _ = self.window_at(level)
            m = math.lcm(m, (2**level) * window)
        return m


@dataclass(frozen=True)
class VQConfig:
    """The VQ-f4 autoencoder (``ldm.models.autoencoder.VQModelTorch``)."""

    embed_dim: int
    n_embed: int
    ch: int
    ch_mult: Tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    in_channels: int
    out_ch: int
    resolution: int
    attn_resolutions: Tuple[int, ...]
    double_z: bool
    use_fp16: bool

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class DiffusionConfig:
    """The ResShift diffusion settings, and the one-step constants derived from them."""

    kappa: float
    etas_end: float
    steps: int
    min_noise_level: float
    power: float
    schedule_name: str
    sf: int
    timestep_respacing: Optional[int]
    normalize_input: bool
    scale_factor: float
    predict_type: str
    latent_flag: bool

    def sqrt_etas(self) -> List[float]:
        """The base exponential schedule of sqrt(eta_t), in float64 as the original computes it."""
        if self.schedule_name != "exponential":
            raise ConfigError(f"diffusion.schedule_name {self.schedule_name!r} is not supported (only 'exponential')")
        eta_start = min(self.min_noise_level / self.kappa, self.min_noise_level, math.sqrt(0.001))
        t = self.steps
        base = math.exp(math.log(self.etas_end / eta_start) / (t - 1))
        return [eta_start * base ** (((i / (t - 1)) ** self.power) * (t - 1)) for i in range(t)]

    def one_step(self) -> "OneStepConstants":
        """The constants of the one-step path: model timestep, prior noise scale k, input normaliser."""
        import numpy as np

        sqrt_etas = self.sqrt_etas()
        n = self.timestep_respacing or self.steps
        kept = sorted({int(self.steps / n * x) for x in range(n)})
        t_index = kept[-1]
        # the original pulls float64 schedule entries into float32 and does the arithmetic there
        sqrt_eta = np.float32(sqrt_etas[t_index])
        eta = np.float32(sqrt_etas[t_index] ** 2)
        k = np.float32(np.float32(self.kappa) * sqrt_eta)
        if self.normalize_input:
            s_in = np.float32(np.sqrt(eta * np.float32(self.kappa**2) + np.float32(1.0)))
        else:
            s_in = np.float32(1.0)
        return OneStepConstants(timestep=t_index, prior_scale=float(k), input_scale=float(s_in))


@dataclass(frozen=True)
class OneStepConstants:
    timestep: int
    prior_scale: float  # x_T = z_y + prior_scale * eps
    input_scale: float  # UNet receives x_T / input_scale


@dataclass(frozen=True)
class ModelConfig:
    """Everything read from one config file."""

    source: Path
    unet: UNetConfig
    diffusion: Optional[DiffusionConfig]
    autoencoder: Optional[VQConfig]
    raw: Dict[str, Any]

    @property
    def is_binary(self) -> bool:
        return self.unet.binary is not None


def float_twin(cfg: UNetConfig) -> UNetConfig:
    """The full-precision model of the same family: same architecture, no binarization."""
    from dataclasses import replace

    return replace(cfg, binary=None)


def _as_tuple_per_level(sec: _Section, key: str, levels: int) -> Tuple[int, ...]:
    value = sec.get(key, (int, list))
    if isinstance(value, int):
        return (value,) * levels
    values = sec.ints(key)
    if len(values) != levels:
        raise ConfigError(f"{sec.source}: '{sec._path(key)}' has {len(values)} entries, channel_mult has {levels}")
    return tuple(values)


def _quant_config(sec: _Section, key: str) -> Tuple[int, bool, bool]:
    q = sec.get(key, dict, None)
    if q is None:
        raise ConfigError(f"{sec.source}: missing field '{sec._path(key)}'")
    qs = _Section(q, sec.source, sec._path(key))
    return qs.get("rank", int), qs.get("if_LRMB", bool), qs.get("if_SMB", bool)


def _parse_binary(p: _Section) -> Optional[BinaryConfig]:
    if not (p.has("conv_quant_modules") or p.has("linear_quant_modules")):
        return None
    for key, expected in (
        ("conv_quant_modules", "BinaryConv2d_ours_with_skip_and_lora"),
        ("linear_quant_modules", "BinaryLinear_ours_with_skip_and_lora"),
    ):
        found = p.get(key, str)
        if found != expected:
            raise ConfigError(f"{p.source}: '{p._path(key)}' is {found!r}; only {expected!r} is supported")
    if not p.get("binary_linear", bool, True):
        raise ConfigError(f"{p.source}: 'binary_linear: false' is not supported")
    conv_rank, conv_lrmb, conv_smb = _quant_config(p, "conv_quant_config")
    lin_rank, lin_lrmb, lin_smb = _quant_config(p, "linear_quant_config")

    def rules(key: str) -> Tuple[Tuple[Tuple[str, ...], float], ...]:
        out = []
        for entry in p.get(key, list, []):
            if not isinstance(entry, dict) or "skip_keywords" not in entry:
                raise ConfigError(f"{p.source}: entries of '{p._path(key)}' need 'skip_keywords', got {entry!r}")
            threshold = entry.get("param_threshold", float("inf"))
            if not isinstance(threshold, (int, float)):
                raise ConfigError(f"{p.source}: '{p._path(key)}.param_threshold' must be a number, got {threshold!r}")
            out.append((tuple(str(k) for k in entry["skip_keywords"]), float(threshold)))
        return tuple(out)

    return BinaryConfig(
        conv_rank=conv_rank,
        linear_rank=lin_rank,
        conv_lrmb=conv_lrmb,
        conv_smb=conv_smb,
        linear_lrmb=lin_lrmb,
        linear_smb=lin_smb,
        fp_conv_rules=rules("which_fp_conv"),
        fp_linear_rules=rules("which_fp_linear"),
    )


def _parse_unet(root: _Section) -> UNetConfig:
    model = root.section("model")
    p = model.section("params")
    channel_mult = tuple(p.ints("channel_mult"))
    levels = len(channel_mult)
    cfg = UNetConfig(
        image_size=p.get("image_size", int),
        in_channels=p.get("in_channels", int),
        model_channels=p.get("model_channels", int),
        out_channels=p.get("out_channels", int),
        attention_resolutions=tuple(p.ints("attention_resolutions")),
        channel_mult=channel_mult,
        num_res_blocks=_as_tuple_per_level(p, "num_res_blocks", levels),
        num_head_channels=p.get("num_head_channels", int),
        swin_depth=p.get("swin_depth", int),
        swin_embed_dim=p.get("swin_embed_dim", int),
        window_size=p.get("window_size", int),
        mlp_ratio=p.get("mlp_ratio", float),
        use_scale_shift_norm=p.get("use_scale_shift_norm", bool),
        conv_resample=p.get("conv_resample", bool),
        resblock_updown=p.get("resblock_updown", bool),
        cond_lq=p.get("cond_lq", bool),
        binary=_parse_binary(p),
    )
    if cfg.resblock_updown:
        raise ConfigError(f"{p.source}: 'model.params.resblock_updown: true' is not supported")
    if not cfg.conv_resample:
        raise ConfigError(f"{p.source}: 'model.params.conv_resample: false' is not supported")
    if p.has("dims") and p.get("dims", int) != 2:
        raise ConfigError(f"{p.source}: 'model.params.dims' must be 2")
    if p.has("patch_norm") and p.get("patch_norm", bool):
        raise ConfigError(f"{p.source}: 'model.params.patch_norm: true' is not supported")
    for name, ch in (("model_channels", cfg.model_channels), ("swin_embed_dim", cfg.swin_embed_dim)):
        if ch % 32:
            raise ConfigError(f"{p.source}: 'model.params.{name}' = {ch} must be a multiple of 32 (GroupNorm32)")
    if cfg.swin_embed_dim % cfg.num_head_channels:
        raise ConfigError(f"{p.source}: swin_embed_dim {cfg.swin_embed_dim} is not a multiple of num_head_channels")
    return cfg


def _parse_diffusion(root: _Section) -> Optional[DiffusionConfig]:
    d = root.section("diffusion", required=False)
    if d is None:
        return None
    p = d.section("params")
    sk = p.section("schedule_kwargs", required=False)
    respacing = p.get("timestep_respacing", (int, str), None, allow_none=True)
    if isinstance(respacing, str):
        if not respacing.isdigit():
            raise ConfigError(f"{p.source}: 'diffusion.params.timestep_respacing' {respacing!r} is not supported")
        respacing = int(respacing)
    return DiffusionConfig(
        kappa=p.get("kappa", float),
        etas_end=p.get("etas_end", float),
        steps=p.get("steps", int),
        min_noise_level=p.get("min_noise_level", float),
        power=sk.get("power", float) if sk is not None else 0.3,
        schedule_name=p.get("schedule_name", str),
        sf=p.get("sf", int),
        timestep_respacing=respacing,
        normalize_input=p.get("normalize_input", bool),
        scale_factor=p.get("scale_factor", float),
        predict_type=p.get("predict_type", str),
        latent_flag=p.get("latent_flag", bool),
    )


def _parse_autoencoder(root: _Section) -> Optional[VQConfig]:
    a = root.section("autoencoder", required=False)
    if a is None:
        return None
    return parse_vq_section(a)


def parse_vq_section(a: "_Section") -> VQConfig:
    p = a.section("params")
    dd = p.section("ddconfig")
    return VQConfig(
        embed_dim=p.get("embed_dim", int),
        n_embed=p.get("n_embed", int),
        ch=dd.get("ch", int),
        ch_mult=tuple(dd.ints("ch_mult")),
        num_res_blocks=dd.get("num_res_blocks", int),
        z_channels=dd.get("z_channels", int),
        in_channels=dd.get("in_channels", int),
        out_ch=dd.get("out_ch", int),
        resolution=dd.get("resolution", int),
        attn_resolutions=tuple(dd.ints("attn_resolutions", [])),
        double_z=dd.get("double_z", bool, False),
        use_fp16=a.get("use_fp16", bool, False),
    )


def _read_yaml(path: PathLike) -> Tuple[Path, Dict[str, Any]]:
    if isinstance(path, str) and path in BUILTIN_CONFIGS:
        path = builtin_config_path(path)
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"{source}: config file not found")
    try:
        data = yaml.safe_load(source.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{source}: cannot read config as YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    return source, data


def load_config(path: PathLike) -> ModelConfig:
    """Read an original-format YAML config (or a built-in name such as ``"bimacosr"``).

    A file with only the ``autoencoder`` section (like ``vqgan.yaml``) gives a config
    whose ``unet`` is None is NOT allowed here; use :func:`load_vq_config` for that.
    """
    source, data = _read_yaml(path)
    return _model_config(source, data)


def _model_config(source: Path, data: Dict[str, Any]) -> ModelConfig:
    root = _Section(data, source, "")
    return ModelConfig(
        source=source,
        unet=_parse_unet(root),
        diffusion=_parse_diffusion(root),
        autoencoder=_parse_autoencoder(root),
        raw=data,
    )


def load_config_text(text: str, source: PathLike) -> ModelConfig:
    """A config from YAML text, e.g. the copy an exported artifact carries in its metadata;
    ``source`` names it in messages (and becomes ``ModelConfig.source``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: cannot read config as YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    return _model_config(Path(source), data)


def load_vq_config(path: PathLike) -> VQConfig:
    """The autoencoder section of a full config, or of a file that holds only that section."""
    source, data = _read_yaml(path)
    root = _Section(data, source, "")
    vq = _parse_autoencoder(root)
    if vq is None:
        raise ConfigError(f"{source}: missing section 'autoencoder'")
    return vq
