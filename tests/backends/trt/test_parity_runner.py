"""check --backend tensorrt: the graphs its engines are built from (tested on any machine), and the
three-level check on a real engine (needs TensorRT, a GPU, cuda-python and the plugin; skips naming
what is missing)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from bimaco_deploy.backends.tensorrt import builder as tb
from bimaco_deploy.backends.tensorrt.runner import exposed_unet_graph, layer_graph
from bimaco_deploy.errors import BackendUnavailable, InputError

from conftest import need


@pytest.fixture(scope="module")
def unet_onnx(tmp_path_factory):
    from bimaco_deploy.export.exporter import export

    out = tmp_path_factory.mktemp("trtcheck") / "tiny"
    export(need("config.yaml"), need("bimacosr_tiny.pth"), out, with_vq=False, progress=False, print_report=False)
    return out


def _table(model):
    from bimaco_deploy.backends.onnxruntime import binary_layer_table

    return binary_layer_table({p.key: p.value for p in model.metadata_props})


def test_a_layer_graph_holds_one_bimaco_node_and_a_concrete_input_shape(unet_onnx):
    model = onnx.load(str(unet_onnx / "unet.onnx"))
    row = next(r for r in _table(model) if r["name"] == "input_blocks.4.0.in_layers.2")
    sub = layer_graph(model, row, (1, 32, 16, 16), np.dtype(np.float32))
    dims = [d.dim_value for d in sub.graph.input[0].type.tensor_type.shape.dim]
    assert sub.graph.input[0].name == row["input"] and dims == [1, 32, 16, 16]
    assert [n.op_type for n in sub.graph.node if n.domain == "bimaco"] == ["BinaryConv2d"]
    assert sub.graph.output[0].name == row["output"]


def test_the_exposed_graph_outputs_every_binary_layer_input(unet_onnx):
    model = onnx.load(str(unet_onnx / "unet.onnx"))
    table = _table(model)
    exposed = exposed_unet_graph(model, table, np.dtype(np.float32))
    names = [o.name for o in exposed.graph.output]
    assert names[0] == "out" and set(r["input"] for r in table) <= set(names)
    assert len(model.graph.output) == 1  # the artifact's graph is left as it was


def test_check_tensorrt_takes_no_engine_and_says_what_is_missing_here(unet_onnx):
    from bimaco_deploy.check.parity import check

    with pytest.raises(InputError, match="--engine e.plan is not used by check --backend tensorrt"):
        from bimaco_deploy.backends import BackendSpec, make_backend
        from bimaco_deploy.models import load_config

        make_backend(BackendSpec("tensorrt", load_config(need("config.yaml")), engine="e.plan",
                                 artifacts=unet_onnx)).parity_runner()
    try:
        tb.import_tensorrt()
    except BackendUnavailable:
        with pytest.raises(BackendUnavailable, match="TensorRT"):
            check(need("config.yaml"), need("bimacosr_tiny.pth"), unet_onnx, backend="tensorrt", levels=(1,))


def _requirements() -> str:
    try:
        tb.import_tensorrt()
        from bimaco_deploy.backends.tensorrt.runner import import_cudart

        err, n = import_cudart().cudaGetDeviceCount()
        if int(err) != 0 or n == 0:
            return "no CUDA device"
    except BackendUnavailable as err:
        return str(err)
    lib = tb.find_plugin_library()
    if lib is None or not lib.is_file():
        return "the TensorRT plugin library is not built (cmake -S plugins_cpp -B build/trt; or set BIMACO_TRT_PLUGIN)"
    return ""


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(_requirements()), reason=_requirements() or "ok")
def test_check_tensorrt_passes_levels_1_and_2(unet_onnx):
    from bimaco_deploy.check.parity import check

    layers = ["time_embed.0", "input_blocks.4.0.in_layers.2", "input_blocks.7.1.blocks.1.attn.qkv"]
    rep = check(need("config.yaml"), need("bimacosr_tiny.pth"), unet_onnx, backend="tensorrt", levels=(1, 2),
                layers=layers, sizes=[(1, 32, 32)])
    assert rep["runs_on"].startswith("tensorrt")
    assert rep["level1"]["passed"], rep["level1"]["layers"]
    assert rep["level2"]["cases"][0]["verdict"] in ("match", "diverged_after_fragile_flip")
