"""The generated Triton model repositories: every config.pbtxt parses with Triton's own
ModelConfig protobuf (shipped by tritonclient), the networks' configs name the inputs,
outputs, types and shapes of our exported ONNX graphs, and the ensemble is wired."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from bimaco_deploy.errors import ArtifactError, InputError
from bimaco_deploy.serving import names as N
from bimaco_deploy.serving.repository import (
    ENGINE_FILES,
    ONNX_FILES,
    PLUGIN_FILE,
    write_repository,
)

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (pip install 'bimaco-deploy[serve]')"
)
from google.protobuf import text_format  # noqa: E402  (tritonclient brings protobuf)

TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}


def parse(path: Path):
    msg = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), msg)  # raises on any unknown field, enum or syntax error
    return msg


def parse_all(repo: Path) -> Dict[str, object]:
    return {name: parse(repo / name / "config.pbtxt") for name in N.MODELS}


def type_name(enum_value: int) -> str:
    return model_config_pb2.DataType.Name(enum_value)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Dict[str, Path]:
    """The tiny config exported with random weights, in fp32 and fp16."""
    from bimaco_deploy.export.exporter import export

    out = {}
    for dtype in ("fp32", "fp16"):
        d = tmp_path_factory.mktemp("art") / dtype
        export("bimacosr-tiny", None, d, seed=0, dtype=dtype, progress=False, print_report=False)
        out[dtype] = d
    return out


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Path:
    """Stand-ins for engine and plugin files: the generator copies them without reading them
    (no TensorRT here; the tensorrt-marked tests build and serve real ones)."""
    d = tmp_path_factory.mktemp("engines")
    for f in ENGINE_FILES.values():
        (d / f).write_bytes(b"engine bytes: opaque to the repository writer")
    (d / PLUGIN_FILE).write_bytes(b"plugin bytes")
    return d


def onnx_graph_io(path: Path):
    import onnx
    from onnx import helper

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in g.initializer}

    def rows(vs):
        out = {}
        for v in vs:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            out[v.name] = (str(helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims)
        return out

    return rows(g.input), rows(g.output)


@pytest.mark.parametrize("backend,dtype", [("onnxruntime", "fp32"), ("tensorrt", "fp32"), ("onnxruntime", "fp16"),
                                           ("tensorrt", "fp16")])
def test_network_configs_name_the_exported_graphs_inputs_outputs_types_and_shapes(tmp_path, artifacts, engines,
                                                                                   backend, dtype):
    trt = dict(engines=engines, plugin_lib=engines / PLUGIN_FILE) if backend == "tensorrt" else {}
    repo = write_repository(tmp_path / "repo", backend=backend, artifacts=artifacts[dtype], max_batch=3, instances=2,
                            **trt).path
    cfgs = parse_all(repo)
    for name in N.NETWORKS:
        cfg = cfgs[name]
        assert cfg.platform == ("tensorrt_plan" if backend == "tensorrt" else "onnxruntime_onnx")
        assert cfg.max_batch_size == 3
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
        assert cfg.HasField("dynamic_batching")
        assert (repo / name / "1" / cfg.default_model_filename).is_file()
        ins, outs = onnx_graph_io(artifacts[dtype] / ONNX_FILES[backend][name])
        for tensors, graph in ((cfg.input, ins), (cfg.output, outs)):
            assert [t.name for t in tensors] == list(graph)
            for t in tensors:
                np_dtype, dims = graph[t.name]
                assert type_name(t.data_type) == TYPES[np_dtype], t.name
                assert dims[0] == -1  # the batch axis: max_batch_size, not a dim
                if len(dims) == 1:  # timesteps [N]: one element per batch item, reshaped to the graph's [N]
                    assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == []
                else:
                    assert list(t.dims) == dims[1:], t.name
    if dtype == "fp16":  # the fp16 UNet's x, lq and out are float16: the stages around it follow
        assert type_name(cfgs[N.UNET].input[0].data_type) == "TYPE_FP16"
        assert type_name(next(t for t in cfgs[N.PREPROCESS].output if t.name == N.LQ).data_type) == "TYPE_FP16"
        assert type_name(next(t for t in cfgs[N.TO_UNET].output if t.name == N.X).data_type) == "TYPE_FP16"
        assert type_name(cfgs[N.FROM_UNET].input[0].data_type) == "TYPE_FP16"


def _tensor_types(cfg) -> Dict[str, str]:
    return {t.name: type_name(t.data_type) for t in list(cfg.input) + list(cfg.output)}


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime", "python"])
def test_ensemble_steps_consume_only_tensors_already_produced_with_matching_types(tmp_path, artifacts, engines,
                                                                                 backend):
    kw = {"tensorrt": dict(artifacts=artifacts["fp32"], engines=engines, plugin_lib=engines / PLUGIN_FILE),
          "onnxruntime": dict(artifacts=artifacts["fp32"]), "python": dict(config="bimacosr-tiny")}[backend]
    repo = write_repository(tmp_path / "repo", backend=backend, **kw).path
    cfgs = parse_all(repo)
    ens = cfgs[N.ENSEMBLE]
    assert ens.platform == "ensemble"
    assert [(t.name, type_name(t.data_type), list(t.dims), t.optional) for t in ens.input] == [
        (N.LR, "TYPE_UINT8", [-1, -1, 3], False), (N.SEED, "TYPE_INT64", [1], True),
        (N.TILE_INDEX, "TYPE_INT64", [1], True)]
    assert [(t.name, type_name(t.data_type), list(t.dims)) for t in ens.output][0] == (N.SR, "TYPE_UINT8", [-1, -1, 3])
    produced = {t.name: type_name(t.data_type) for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = _tensor_types(cfgs[step.model_name])
        for model_tensor, ens_tensor in step.input_map.items():
            assert ens_tensor in produced, f"{step.model_name} reads {ens_tensor} before any step writes it"
            assert produced[ens_tensor] == model[model_tensor], (step.model_name, model_tensor)
        for model_tensor, ens_tensor in step.output_map.items():
            produced[ens_tensor] = model[model_tensor]
    assert {t.name for t in ens.output} <= set(produced)
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [
        N.PREPROCESS, N.VQ_ENCODER, N.TO_UNET, N.UNET, N.FROM_UNET, N.VQ_DECODER, N.POSTPROCESS]
    tiled = cfgs[N.TILED]
    assert tiled.backend == "python" and [t.name for t in tiled.input] == [N.LR, N.SEED]
    for name in (N.TILED, N.PREPROCESS, N.TO_UNET, N.FROM_UNET, N.POSTPROCESS):
        assert (repo / name / "1" / "model.py").is_file() and (repo / name / "1" / "bimacosr.yaml").is_file()


def test_tensorrt_repository_carries_the_plugin_and_the_exact_launch_command(tmp_path, artifacts, engines):
    result = write_repository(tmp_path / "repo", backend="tensorrt", artifacts=artifacts["fp32"], engines=engines,
                              plugin_lib=engines / PLUGIN_FILE)
    assert (result.path / PLUGIN_FILE).read_bytes() == b"plugin bytes"
    assert result.command == ["tritonserver", "--model-repository=/models",
                              f"--backend-config=tensorrt,plugins=/models/{PLUGIN_FILE}"]
    readme = (result.path / "README.txt").read_text()
    assert " ".join(result.command) in readme and "nvcr.io/nvidia/tritonserver:24.10-py3" in readme
    assert "trtexec" in readme and "vq_encoder.plan" in readme


def test_python_repository_places_checkpoints_and_sets_the_runtime(tmp_path, tiny_dir):
    repo = write_repository(tmp_path / "repo", backend="python", config=tiny_dir / "config.yaml",
                            ckpt=tiny_dir / "bimacosr_tiny.pth", vq_ckpt=tiny_dir / "vqgan.pth", vq_dtype="float32",
                            max_batch=2, instances=1, tile=64, max_size=128).path
    cfgs = parse_all(repo)
    unet = {k: v.string_value for k, v in cfgs[N.UNET].parameters.items()}
    assert unet["runtime"] == "torch" and unet["unet_ckpt"] == "bimacosr_tiny.pth"
    assert (repo / N.UNET / "1" / "bimacosr_tiny.pth").read_bytes() == (tiny_dir / "bimacosr_tiny.pth").read_bytes()
    enc = {k: v.string_value for k, v in cfgs[N.VQ_ENCODER].parameters.items()}
    assert enc["vq_ckpt"] == "vqgan.pth" and enc["vq_dtype"] == "float32"
    # the autoencoder hands its latent on in float32 at any precision
    assert type_name(cfgs[N.VQ_ENCODER].output[0].data_type) == "TYPE_FP32"
    tiled = {k: v.string_value for k, v in cfgs[N.TILED].parameters.items()}
    assert (tiled["tile"], tiled["max_size"]) == ("64", "128")
    fp16 = write_repository(tmp_path / "repo16", backend="python", config=tiny_dir / "config.yaml", vq_dtype="float16").path
    enc16 = parse(fp16 / N.VQ_ENCODER / "config.pbtxt")
    assert enc16.parameters["vq_dtype"].string_value == "float16"
    assert type_name(enc16.output[0].data_type) == "TYPE_FP32"


def test_missing_engines_are_named_with_the_commands_that_build_them(tmp_path, artifacts):
    with pytest.raises(ArtifactError, match=r"(?s)missing files: .*unet\.plan.*trtexec"):
        write_repository(tmp_path / "repo", backend="tensorrt", artifacts=artifacts["fp32"], engines=tmp_path,
                         plugin_lib=tmp_path / "x.so")
    assert not (tmp_path / "repo").exists()


def test_bad_options_fail_before_anything_is_written(tmp_path, artifacts):
    for kw, pattern in [(dict(backend="triton"), "--backend"), (dict(backend="python", max_batch=0), "--max-batch"),
                        (dict(backend="python", instances=0), "--instances"),
                        (dict(backend="onnxruntime"), "--artifacts"),
                        (dict(backend="onnxruntime", ckpt="unet.pth"), "--ckpt do not apply to --backend onnxruntime")]:
        with pytest.raises((InputError, ArtifactError), match=pattern):
            write_repository(tmp_path / "repo", config="bimacosr-tiny", **kw)
    assert not (tmp_path / "repo").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ArtifactError, match="--force"):
        write_repository(tmp_path / "taken", backend="python", config="bimacosr-tiny")


def test_a_failed_write_leaves_the_previous_repository_intact(tmp_path, artifacts, engines):
    repo = write_repository(tmp_path / "repo", backend="onnxruntime", artifacts=artifacts["fp32"]).path
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    with pytest.raises(ArtifactError):
        write_repository(repo, backend="tensorrt", artifacts=artifacts["fp32"], engines=tmp_path / "none",
                         plugin_lib=engines / PLUGIN_FILE, force=True)
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before


def test_pbtxt_writer_quotes_strings_and_writes_enums_bare():
    from bimaco_deploy.serving.pbtxt import Enum, render

    text = render({"name": 'a "b"', "max_batch_size": 2, "input": [{"name": "x", "data_type": Enum("TYPE_FP32"),
                                                                   "dims": [1], "reshape": {"shape": []}}]})
    msg = model_config_pb2.ModelConfig()
    text_format.Parse(text, msg)
    assert msg.name == 'a "b"' and msg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert msg.input[0].HasField("reshape") and list(msg.input[0].reshape.shape) == []
    assert np.array_equal(list(msg.input[0].dims), [1])
