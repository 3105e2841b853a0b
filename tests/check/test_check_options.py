"""check beyond ONNX Runtime: the packed torch backend on every ISA this CPU runs, --atol/--rtol,
--save-inputs/--save-outputs, level-2 rows that say when a divergence is explained, level-3 rows that
say why they pass, and per-layer progress."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bimaco_deploy.check.parity import Thresholds, _level2_note, _level3_note, check, explain_case
from bimaco_deploy.cli import app
from bimaco_deploy.errors import BackendUnavailable
from bimaco_deploy.plugins import torch_ops
from bimaco_deploy.progress import Progress

from conftest import need

SOME_LAYERS = ["time_embed.0", "input_blocks.4.0.in_layers.2", "input_blocks.6.0.op", "output_blocks.0.0.skip_connection",
               "input_blocks.7.1.blocks.1.attn.qkv", "input_blocks.1.1.blocks.0.mlp.fc2"]

ISAS = torch_ops.cpu_available_isas()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from bimaco_deploy.export.exporter import export

    out = tmp_path_factory.mktemp("opts") / "tiny"
    export(need("config.yaml"), need("bimacosr_tiny.pth"), out, with_vq=False, progress=False, print_report=False)
    return out


@pytest.mark.skipif(not ISAS, reason="the native CPU kernels are not built")
@pytest.mark.parametrize("isa", [pytest.param(i, marks=[] if i == ISAS[-1] else pytest.mark.slow) for i in ISAS])
def test_the_packed_torch_backend_passes_levels_1_and_2_on_every_isa(isa):
    rep = check(need("config.yaml"), need("bimacosr_tiny.pth"), backend="torch", isa=isa, levels=(1, 2),
                layers=SOME_LAYERS, sizes=[(1, 32, 32)])
    assert f"ISA {isa}" in rep["runs_on"] and rep["isa"] == isa
    l1 = rep["level1"]
    assert sorted(r["name"] for r in l1["layers"]) == sorted(SOME_LAYERS)
    assert l1["passed"] and l1["worst_max_rel"] < 1e-5, [r for r in l1["layers"] if not r["passed"]]
    (case,) = rep["level2"]["cases"]
    assert case["verdict"] in ("match", "diverged_after_fragile_flip"), case
    assert rep["passed"]


def test_an_isa_this_cpu_lacks_is_refused():
    with pytest.raises(BackendUnavailable, match="CPU ISA 'no-such-isa' is not available here"):
        check(need("config.yaml"), need("bimacosr_tiny.pth"), backend="torch", isa="no-such-isa", levels=(1,))


@pytest.mark.slow
@pytest.mark.skipif(not ISAS, reason="the native CPU kernels are not built")
def test_cli_check_torch_on_all_isas(tmp_path):
    out = tmp_path / "c.json"
    r = CliRunner().invoke(app, ["check", "--backend", "torch", "--config", str(need("config.yaml")), "--ckpt",
                                 str(need("bimacosr_tiny.pth")), "--isa", "all", "--levels", "1", "--layer",
                                 "input_blocks.4.0.in_layers.2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert f"all ISAs ({', '.join(ISAS)}): pass" in r.output
    import json

    assert list(json.loads(out.read_text())["runs"]) == list(ISAS)


def test_rtol_and_atol_set_the_level1_tolerance(artifacts):
    kw = dict(levels=(1,), layers=SOME_LAYERS[:2])
    strict = check(need("config.yaml"), need("bimacosr_tiny.pth"), artifacts, thresholds=Thresholds(rtol=1e-12), **kw)
    assert not strict["passed"] and strict["level1"]["tolerance"] == 1e-12
    loose = check(need("config.yaml"), need("bimacosr_tiny.pth"), artifacts, thresholds=Thresholds(rtol=0.0, atol=1.0), **kw)
    assert loose["passed"] and loose["level1"]["atol"] == 1.0


def test_cli_refuses_negative_tolerances(artifacts):
    r = CliRunner().invoke(app, ["check", "--artifacts", str(artifacts), "--rtol", "-1"])
    assert r.exit_code == 2 and "--rtol -1.0: must be >= 0" in r.output


def test_save_inputs_and_outputs_reproduce_a_layer(artifacts, tmp_path):
    from bimaco_deploy.backends.onnxruntime import OrtParityRunner

    ins, outs = tmp_path / "in", tmp_path / "out"
    r = CliRunner().invoke(app, ["check", "--artifacts", str(artifacts), "--ckpt", str(need("bimacosr_tiny.pth")),
                                 "--levels", "1,2", "--layer", SOME_LAYERS[1], "--save-inputs", str(ins),
                                 "--save-outputs", str(outs), "--no-explain"])
    assert r.exit_code == 0, r.output
    i1, o1 = np.load(ins / "level1.npz"), np.load(outs / "level1.npz")
    assert {"x", "timesteps", "lq", f"{SOME_LAYERS[1]}.input"} <= set(i1.files)
    assert {f"{SOME_LAYERS[1]}.reference", f"{SOME_LAYERS[1]}.backend"} == set(o1.files)
    again = OrtParityRunner(artifacts).run_layer(SOME_LAYERS[1], i1[f"{SOME_LAYERS[1]}.input"])
    np.testing.assert_array_equal(again, o1[f"{SOME_LAYERS[1]}.backend"])
    i2, o2 = np.load(ins / "level2.npz"), np.load(outs / "level2.npz")
    assert {"case0.x", "case0.timesteps", "case0.lq", "case1.x"} <= set(i2.files)
    assert o2["case1.reference"].shape == o2["case1.backend"].shape == (1, 3, 32, 64)


def test_level1_progress_is_per_layer(artifacts):
    stream = io.StringIO()
    check(need("config.yaml"), need("bimacosr_tiny.pth"), artifacts, levels=(1,), layers=SOME_LAYERS[:3],
          progress=Progress("plain", stream=stream, interval=0.0))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "level 1: teacher-forced layers (3 layers) ..."
    import re

    assert [re.search(r"(\d+/3) layers", ln).group(1) for ln in lines[1:]] == ["1/3", "2/3", "3/3"]
    assert lines[-1].endswith(f"({SOME_LAYERS[2]})")


def test_a_divergence_caused_by_one_near_zero_flip_is_explained_and_a_large_one_is_not():
    """A 'backend' that differs from the reference only in the sign of one binarized activation:
    at a near-zero element the row is explained (one flip, its margin); at a large one it is a bug."""
    from bimaco_deploy.check.parity import fixture_like_inputs, margins
    from bimaco_deploy.models import iter_binary_layers, load_unet
    from bimaco_deploy.models.probes import capture_binary_inputs, force_signs

    model = load_unet(need("config.yaml"), need("bimacosr_tiny.pth"))
    x, t, lq = fixture_like_inputs(1, 32, 32, 3, 3, 14, 5)
    args = (torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(lq))
    with torch.no_grad(), capture_binary_inputs(model) as cap:
        model(*args)
    convs = {n for n, m in iter_binary_layers(model) if m.__class__.__name__ == "BinaryConv2d"}
    name = "input_blocks.4.0.in_layers.2"
    m = margins(cap[name].numpy(), 4 if name in convs else cap[name].dim()).reshape(-1)
    m[m == 0] = np.inf
    order = np.argsort(m)
    th = Thresholds()
    for idx, expect in ((int(order[0]), True), (int(order[-1 - int(np.isinf(m).sum())]), False)):
        value = float(cap[name].reshape(-1)[idx])
        with torch.no_grad(), force_signs(model, {name: [(idx, -int(np.sign(value)), float(m[idx]))]}), \
                capture_binary_inputs(model) as bcap:
            out = model(*args).numpy()
        fragile = 10 * float(m[order[0]])  # the smallest margin counts as fragile, the largest does not
        exp = explain_case(model, x, t, lq, out, {k: v.numpy() for k, v in bcap.items()}, fragile_margin=fragile,
                           atol=1e-5 * float(np.abs(out).max()), max_flips=4)
        assert exp["explained"] is expect, exp
        if expect:
            assert exp["flips"] == 1 and exp["layers"] == [name]
            row = {"verdict": "diverged_after_fragile_flip", "first_flip": {"max_margin": float(m[idx])},
                   "explanation": exp, "max_rel": 1.0}
            assert _level2_note(row, th) == f"explained: 1 flip, margin <= {exp['max_margin']:.1e}"
        else:
            assert exp["blocking"][0] == name and "a bug, not rounding" in exp["summary"]


def test_level2_and_level3_notes_say_why_a_row_passes_or_fails():
    th = Thresholds()
    fragile = {"layer": "a.b", "max_margin": 3e-7, "fragile": True}
    row2 = {"verdict": "diverged_after_fragile_flip", "first_flip": fragile, "max_rel": 0.7}
    assert _level2_note(row2, th) == ("passes on the first flip's margin only: 3.0e-07 < 1e-04 (rounding; "
                                      "not explained: --no-explain)")
    low = {"psnr_db": 15.2, "first_flip": fragile}
    assert _level3_note(low, th).startswith("passes: PSNR is reported, not enforced (no --min-psnr); first flip in a.b")
    assert _level3_note(low, Thresholds(min_psnr_db=30)) == "PSNR 15.20 dB < --min-psnr 30"
    bug = {"psnr_db": 40.0, "first_flip": {"layer": "a.b", "max_margin": 0.3, "fragile": False}}
    assert "not rounding noise" in _level3_note(bug, th)
    assert _level3_note({"psnr_db": float("inf"), "first_flip": None}, th) == "no sign flip"
