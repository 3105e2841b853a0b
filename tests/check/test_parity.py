"""The three-level parity checker: it passes the portable ONNX artifact, and it catches a broken one."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from bimaco_deploy.errors import BackendUnavailable

from conftest import need as _need


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from bimaco_deploy.export.exporter import export

    out = tmp_path_factory.mktemp("parity") / "tiny"
    export(_need("config.yaml"), _need("bimacosr_tiny.pth"), out, vq_ckpt=_need("vqgan.pth"), progress=False,
           print_report=False)
    return out


@pytest.fixture(scope="module")
def broken(artifacts, tmp_path_factory):
    """A copy whose portable graph has 3 sign bits of one layer flipped: a packing bug in miniature."""
    out = tmp_path_factory.mktemp("broken") / "tiny"
    shutil.copytree(artifacts, out)
    path = out / "unet_portable.onnx"
    m = onnx.load(str(path))
    t = next(t for t in m.graph.initializer if t.name == "input_blocks.4.0.in_layers.2.wbits")
    words = onnx.numpy_helper.to_array(t).copy()
    words.reshape(-1)[:3] ^= np.int32(1)
    t.CopyFrom(onnx.numpy_helper.from_array(words, t.name))
    onnx.save(m, str(path))
    return out


#: one layer of each kind: 3x3 conv, strided conv (avg-pool shortcut), 1x1 skip, 2-D and 3-D linears, fc2 (GELU zeros)
SOME_LAYERS = ["time_embed.0", "input_blocks.4.0.in_layers.2", "input_blocks.6.0.op", "output_blocks.0.0.skip_connection",
               "input_blocks.7.1.blocks.1.attn.qkv", "input_blocks.1.1.blocks.0.mlp.fc2", "output_blocks.5.1.conv"]


@pytest.mark.parametrize("layers", [SOME_LAYERS, pytest.param(None, marks=pytest.mark.slow)])
def test_levels_1_and_2_pass_on_the_portable_artifact(artifacts, layers):
    from bimaco_deploy.check.parity import check

    rep = check(_need("config.yaml"), _need("bimacosr_tiny.pth"), artifacts, levels=(1, 2), layers=layers)
    l1 = rep["level1"]
    assert len(l1["layers"]) == (len(layers) if layers else 177)
    assert l1["passed"], [r for r in l1["layers"] if not r["passed"]][:3]
    assert l1["worst_max_rel"] < 1e-5
    assert all(r["disagreements_above_tol"] == 0 for r in l1["layers"])
    l2 = rep["level2"]
    assert [c["shape"] for c in l2["cases"]] == [[1, 3, 32, 32], [1, 3, 32, 64]]
    for c in l2["cases"]:
        # either an exact-enough match, or a divergence that starts at a near-zero activation
        assert c["verdict"] in ("match", "diverged_after_fragile_flip"), c
        if c["verdict"] == "match":
            assert c["max_rel"] < 1e-5 and c["first_flip"] is None
    assert rep["passed"] and "level3" not in rep


def test_a_broken_layer_is_caught(broken):
    from bimaco_deploy.check.parity import check

    rep = check(_need("config.yaml"), _need("bimacosr_tiny.pth"), broken, levels=(1, 2),
                layers=SOME_LAYERS, sizes=[(1, 32, 32)])
    assert not rep["passed"]
    failed = [r["name"] for r in rep["level1"]["layers"] if not r["passed"]]
    assert failed == ["input_blocks.4.0.in_layers.2"]
    # the whole model: the first flip follows the broken layer and is no rounding noise
    first = [c["first_flip"] for c in rep["level2"]["cases"]]
    assert all(f is not None and not f["fragile"] for f in first)
    assert all(c["verdict"] == "non_fragile_flip" for c in rep["level2"]["cases"])


@pytest.mark.slow
def test_level3_pipeline_on_a_calib_image(artifacts):
    from bimaco_deploy.check.parity import Thresholds, check, default_images

    imgs = default_images()
    if not imgs:
        pytest.skip("calib/images is empty")
    rep = check(_need("config.yaml"), _need("bimacosr_tiny.pth"), artifacts, images=imgs[:1],
                vq_ckpt=_need("vqgan.pth"), levels=(3,))
    (row,) = rep["level3"]["images"]
    assert row["image"] == imgs[0].name and np.isfinite(row["psnr_db"]) or row["psnr_db"] == float("inf")
    assert row["first_flip"] is None or row["first_flip"]["fragile"]
    assert 0.0 <= row["max_flip_rate"] <= 1.0
    assert rep["level3"]["passed"] == (row["first_flip"] is None or row["first_flip"]["fragile"])
    strict = check(_need("config.yaml"), _need("bimacosr_tiny.pth"), artifacts, images=imgs[:1],
                   vq_ckpt=_need("vqgan.pth"), levels=(3,), thresholds=Thresholds(min_psnr_db=1000.0))
    assert not strict["passed"]  # a PSNR threshold, when set, is enforced


def test_unknown_backend_is_refused(artifacts):
    from bimaco_deploy.check.parity import check

    from bimaco_deploy.errors import InputError

    with pytest.raises(InputError, match="no binary layer named nope"):
        check(_need("config.yaml"), _need("bimacosr_tiny.pth"), artifacts, levels=(1,), layers=["nope"])
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        check(_need("config.yaml"), _need("bimacosr_tiny.pth"), artifacts, backend="tensorrt", levels=(1,))


def test_cli_check_exit_code(broken, tmp_path):
    from typer.testing import CliRunner

    from bimaco_deploy.cli import app

    res = CliRunner().invoke(app, ["check", "--artifacts", str(broken), "--config", str(_need("config.yaml")), "--ckpt",
                                   str(_need("bimacosr_tiny.pth")), "--levels", "1", "--json", str(tmp_path / "r.json"),
                                   "--layer", "input_blocks.4.0.in_layers.2", "--layer", "time_embed.0"])
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and (tmp_path / "r.json").is_file()


def test_cli_export_refuses_existing_dir(artifacts):
    from typer.testing import CliRunner

    from bimaco_deploy.cli import app

    res = CliRunner().invoke(app, ["export", "--out", str(artifacts), "--config", str(_need("config.yaml")), "--ckpt",
                                   str(_need("bimacosr_tiny.pth"))])
    assert res.exit_code == 2 and "already exists" in res.output
