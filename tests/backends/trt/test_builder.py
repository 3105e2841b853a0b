"""Engine-build choices that need no TensorRT: sizes, profile, precision, artifact checks."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from bimaco_deploy.errors import ArtifactError, BackendUnavailable, BimacoError, InputError
from bimaco_deploy.models.config import load_config
from bimaco_deploy.plugins import contract
from bimaco_deploy.backends.tensorrt import builder as tb
from bimaco_deploy.backends.tensorrt.builder import OnnxInput

UNET_INPUTS = [
    OnnxInput("x", ("N", 3, "H", "W"), "float32"),
    OnnxInput("timesteps", ("N",), "int64"),
    OnnxInput("lq", ("N", 3, "H", "W"), "float32"),
]


def test_size_multiple_comes_from_the_config():
    # published model: windows of 8 at 4 levels -> 64; the reduced fixture config -> 32
    assert load_config("bimacosr").unet.size_multiple == 64
    assert load_config("bimacosr-tiny").unet.size_multiple == 32


def test_profile_shapes_cover_batch_and_hw():
    prof = tb.profile_shapes(UNET_INPUTS, multiple=64, min_hw=(64, 64), opt_hw=(128, 192), max_hw=(256, 256),
                             batch=(1, 2, 4))
    assert prof["x"].min == (1, 3, 64, 64)
    assert prof["x"].opt == (2, 3, 128, 192)
    assert prof["x"].max == (4, 3, 256, 256)
    assert prof["timesteps"].min == (1,) and prof["timesteps"].max == (4,)
    assert prof["lq"] == prof["x"]


@pytest.mark.parametrize("bad", [(96, 64), (64, 100), (0, 64)])
def test_sizes_off_the_model_multiple_are_rejected(bad):
    with pytest.raises(InputError, match="multiples of 64"):
        tb.profile_shapes(UNET_INPUTS, multiple=64, min_hw=(64, 64), opt_hw=bad, max_hw=(256, 256))


def test_profile_order_must_hold():
    with pytest.raises(InputError, match="min <= opt <= max"):
        tb.profile_shapes(UNET_INPUTS, multiple=32, min_hw=(128, 128), opt_hw=(64, 64), max_hw=(256, 256))


def test_unknown_dynamic_axis_is_an_artifact_error():
    with pytest.raises(ArtifactError, match="axis 1"):
        tb.profile_shapes([OnnxInput("x", ("N", "C", "H", "W"), "float32")], multiple=32, min_hw=(32, 32),
                          opt_hw=(32, 32), max_hw=(32, 32))


@pytest.mark.parametrize("text,expected", [("64", (64, 64)), ("128x192", (128, 192)), (" 32X64 ", (32, 64)),
                                           ((16, 32), (16, 32)), (48, (48, 48))])
def test_parse_hw(text, expected):
    assert tb.parse_hw(text) == expected


def test_parse_hw_rejects_garbage():
    with pytest.raises(InputError, match="HxW"):
        tb.parse_hw("big")


@pytest.mark.parametrize("text,expected", [(1, (1, 1, 1)), ("1:4", (1, 4, 4)), ("1:2:8", (1, 2, 8))])
def test_parse_batch(text, expected):
    assert tb.parse_batch(text) == expected


@pytest.mark.parametrize("bad", ["0", "4:1", "a", "1:2:3:4"])
def test_parse_batch_rejects(bad):
    with pytest.raises(InputError):
        tb.parse_batch(bad)


# ------------------------------------------------------------------ precision


def test_trt10_fp16_from_fp32_onnx_uses_the_builder_flag():
    plan = tb.precision_plan("10.3.0.30", True, "float32")
    assert plan.fp16_flag and not plan.strongly_typed and plan.engine_dtype == "float16"


def test_trt10_fp32():
    plan = tb.precision_plan("10.3.0", False, "float32")
    assert not plan.fp16_flag and not plan.strongly_typed and plan.engine_dtype == "float32"


def test_trt10_fp16_onnx_is_strongly_typed_without_flag():
    plan = tb.precision_plan("10.13.2", True, "float16")
    assert plan.strongly_typed and not plan.fp16_flag and plan.engine_dtype == "float16"


def test_trt11_needs_an_fp16_onnx_for_fp16():
    with pytest.raises(ArtifactError, match="--dtype fp16"):
        tb.precision_plan("11.1.0", True, "float32")
    plan = tb.precision_plan("11.1.0", True, "float16")
    assert plan.strongly_typed and not plan.fp16_flag and plan.engine_dtype == "float16"
    plan = tb.precision_plan("11.0", False, "float32")
    assert plan.strongly_typed and plan.engine_dtype == "float32"


def test_old_tensorrt_is_refused():
    with pytest.raises(BackendUnavailable, match="IPluginV3"):
        tb.precision_plan("8.6.1", False, "float32")


# ------------------------------------------------------------------ artifact checks (before TensorRT)


def _tiny_model(path: Path, *, custom: bool, config_text: str = None, dtype=TensorProto.FLOAT) -> Path:
    x = helper.make_tensor_value_info("x", dtype, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("out", dtype, ["N", 3, "H", "W"])
    if custom:
        node = helper.make_node(contract.CONV_OP, ["x", "w", "a", "b"], ["out"], domain=contract.DOMAIN,
                                in_channels=3, kernel_shape=[1, 1], plugin_version="1", plugin_namespace="bimaco")
    else:
        node = helper.make_node("Identity", ["x"], ["out"])
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(contract.DOMAIN, 1)])
    if config_text is not None:
        helper.set_model_props(model, {"config": config_text})
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "unet.onnx"))
    return path


def test_missing_onnx_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="unet.onnx not found"):
        tb.build_engine(tmp_path, tmp_path / "e.plan")


def test_portable_graph_is_refused(tmp_path):
    d = _tiny_model(tmp_path / "a", custom=False)
    with pytest.raises(ArtifactError, match="no bimaco nodes"):
        tb.build_engine(d, tmp_path / "e.plan")


def test_config_is_required_to_know_legal_sizes(tmp_path):
    d = _tiny_model(tmp_path / "a", custom=True)
    with pytest.raises(ArtifactError, match="no 'config' metadata"):
        tb.build_engine(d, tmp_path / "e.plan")


def test_bad_size_is_reported_before_tensorrt_is_needed(tmp_path):
    cfg = load_config("bimacosr-tiny").source.read_text()
    d = _tiny_model(tmp_path / "a", custom=True, config_text=cfg)
    with pytest.raises(InputError, match="multiples of 32"):
        tb.build_engine(d, tmp_path / "e.plan", min_hw="48", opt_hw="64", max_hw="64")
    assert not (tmp_path / "e.plan").exists()


def test_without_tensorrt_the_error_says_what_to_install(tmp_path):
    try:
        tb.import_tensorrt()
    except BackendUnavailable:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    cfg = load_config("bimacosr-tiny").source.read_text()
    d = _tiny_model(tmp_path / "a", custom=True, config_text=cfg)
    with pytest.raises(BackendUnavailable, match="pip install tensorrt|python3-libnvinfer"):
        tb.build_engine(d, tmp_path / "e.plan", min_hw="32", opt_hw="64", max_hw="64")
    assert not (tmp_path / "e.plan").exists()


def test_inputs_and_dtype_are_read_from_the_onnx(tmp_path):
    d = _tiny_model(tmp_path / "a", custom=True, dtype=TensorProto.FLOAT16)
    model = onnx.load(str(d / "unet.onnx"))
    inputs = tb.read_onnx_inputs(model)
    assert inputs == [OnnxInput("x", ("N", 3, "H", "W"), "float16")]
    assert tb.onnx_float_dtype(inputs) == "float16"
    assert tb.count_custom_nodes(model) == {contract.CONV_OP: 1}


def test_plugin_library_search_order(tmp_path, monkeypatch):
    lib = tmp_path / tb.PLUGIN_LIBRARY_NAME
    lib.write_bytes(b"")
    assert tb.find_plugin_library(lib) == lib
    monkeypatch.setenv("BIMACO_TRT_PLUGIN", str(lib))
    assert tb.find_plugin_library() == lib


# ------------------------------------------------------------------ runtime backend checks that need no TensorRT


def test_backend_names_a_missing_engine(tmp_path):
    from bimaco_deploy.backends.tensorrt.runner import TrtUNet

    with pytest.raises(ArtifactError, match="engine file not found"):
        TrtUNet(tmp_path / "missing.plan")


def test_backend_without_tensorrt_says_what_to_install(tmp_path):
    from bimaco_deploy.backends.tensorrt.runner import TrtUNet

    try:
        tb.import_tensorrt()
    except BackendUnavailable:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    plan = tmp_path / "unet.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailable, match="Install TensorRT"):
        TrtUNet(plan)


def test_float_export_gets_its_engine_built_beside_the_binary_one(tmp_path):
    d = _tiny_model(tmp_path / "a", custom=True)
    assert [j[1].name for j in tb.engine_jobs(d, tmp_path / "unet.plan")] == ["unet.plan"]
    onnx.save(onnx.load(str(d / "unet.onnx")), str(d / "unet_float.onnx"))
    jobs = tb.engine_jobs(d, tmp_path / "unet.plan")
    assert [(src.name, dst.name, custom) for src, dst, custom in jobs] == [
        ("unet.onnx", "unet.plan", True), ("unet_float.onnx", "unet_float.plan", False)]
    assert len(tb.engine_jobs(d, tmp_path / "unet.plan", float_baseline=False)) == 1


def test_a_required_float_baseline_that_was_not_exported_is_named(tmp_path):
    d = _tiny_model(tmp_path / "a", custom=True)
    with pytest.raises(ArtifactError, match="unet_float.onnx not found.*--float-baseline"):
        tb.build_engine(d, tmp_path / "e.plan", float_baseline=True)
    assert not (tmp_path / "e.plan").exists()


def test_tensorrt_bench_names_the_missing_float_engine(tmp_path):
    from bimaco_deploy.backends import BackendSpec, make_float_baseline

    spec = BackendSpec("tensorrt", load_config("bimacosr-tiny"), engine=tmp_path / "unet.plan")
    with pytest.raises(ArtifactError, match="unet_float.plan not found.*--float-baseline"):
        make_float_baseline(spec)


# ------------------------------------------------------------------ timing cache (issue 15, item 4)


class _ConfigFollowingTheHeaders:
    """Stands in for IBuilderConfig's three timing-cache calls with the return values the 10.3 and
    11.1 headers document (createTimingCache: a cache or null; setTimingCache: false when the
    cache's device properties differ and ignoreMismatch is false). It tests OUR handling of those
    values only; test_timing_cache_with_tensorrt below runs the real API where TensorRT exists."""

    GOOD = b"cache-for-this-device"

    def __init__(self):
        self.attached = None

    def create_timing_cache(self, blob):
        if blob in (b"", self.GOOD, b"cache-for-another-device"):
            return _Cache(blob or b"fresh")
        return None

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False  # we never accept a foreign cache silently
        if cache.blob == b"cache-for-another-device":
            return False
        self.attached = cache
        return True

    def get_timing_cache(self):
        return self.attached


class _Cache:
    def __init__(self, blob):
        self.blob = blob

    def serialize(self):
        return self.blob + b"+learned"


def test_timing_cache_is_created_when_missing_and_saved_after_the_build(tmp_path):
    config, path = _ConfigFollowingTheHeaders(), tmp_path / "trt.cache"
    cache = tb.attach_timing_cache(config, path)
    assert config.attached is cache and not path.exists()
    tb.save_timing_cache(config, path)
    assert path.read_bytes() == b"fresh+learned"


def test_a_corrupt_timing_cache_is_refused_before_the_build(tmp_path):
    path = tmp_path / "trt.cache"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match=r"trt\.cache: not a TensorRT timing cache TensorRT can read"):
        tb.attach_timing_cache(_ConfigFollowingTheHeaders(), path)
    assert path.read_bytes() == b"\x00garbage"  # the user's file is left alone


def test_a_timing_cache_from_another_device_is_refused_before_the_build(tmp_path):
    path = tmp_path / "orin.cache"
    path.write_bytes(b"cache-for-another-device")
    with pytest.raises(ArtifactError, match=r"orin\.cache: the timing cache was made on another GPU"):
        tb.attach_timing_cache(_ConfigFollowingTheHeaders(), path)


def test_a_missing_cache_after_the_build_is_a_clear_error(tmp_path):
    with pytest.raises(BimacoError, match="no timing cache to save"):
        tb.save_timing_cache(_ConfigFollowingTheHeaders(), tmp_path / "x.cache")


@pytest.mark.tensorrt
def test_timing_cache_with_tensorrt(tmp_path):
    try:
        trt = tb.import_tensorrt()
    except BackendUnavailable as err:
        pytest.skip(str(err))
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    if builder is None:
        pytest.skip("TensorRT could not create a builder (no GPU)")
    config = builder.create_builder_config()
    path = tmp_path / "trt.cache"
    tb.attach_timing_cache(config, path)
    tb.save_timing_cache(config, path)
    assert path.stat().st_size > 0
    tb.attach_timing_cache(builder.create_builder_config(), path)  # what we wrote reads back
    path.write_bytes(b"\x00garbage" * 16)
    with pytest.raises(ArtifactError, match="trt.cache"):
        tb.attach_timing_cache(builder.create_builder_config(), path)


def test_the_runner_sets_shapes_and_addresses_only_when_they_change():
    """Each set_input_shape makes TensorRT re-run onShapeChange in all 177 plugin layers: repeated
    calls of one size must not repeat it (issue 15, item 6)."""
    from bimaco_deploy.backends.tensorrt.runner import Bindings

    b = Bindings()
    assert b.changed("shape", "x", (1, 3, 64, 64))
    assert not b.changed("shape", "x", (1, 3, 64, 64))
    assert b.changed("shape", "lq", (1, 3, 64, 64))  # per tensor
    assert b.changed("address", "x", 4096) and not b.changed("address", "x", 4096)
    assert b.changed("shape", "x", (1, 3, 128, 64))
    b.forget()  # after a failure everything is set again
    assert b.changed("shape", "x", (1, 3, 128, 64)) and b.changed("address", "x", 4096)
