"""bench --pipeline: the whole SR, stage by stage, binary vs float, in one run (tiny configs; timings not asserted)."""

from __future__ import annotations

import json

import pytest

from bimaco_deploy.backends import BackendSpec, resolve_config
from bimaco_deploy.bench.pipeline import STAGES, bench_pipeline, pipeline_markdown, run_stages, sample_lr
from bimaco_deploy.errors import InputError


@pytest.fixture(scope="module")
def spec():
    return BackendSpec("torch", resolve_config("bimacosr-tiny"), seed=0)


def test_report_has_every_stage_per_pipeline_and_the_end_to_end_speedup(spec):
    said = []
    report = bench_pipeline(spec, vq_precision="fp32", lr_size=(32, 40), warmup=0, repeats=2, threads=1, progress=said.append)
    assert set(report["pipelines"]) == {"binary", "float"}
    for name, p in report["pipelines"].items():
        assert list(p["stages_ms"]) == list(STAGES) and p["stages_ms"]["total"] > 0
        assert len(p["raw_ms"]["total"]) == 2 and p["peak_rss_mib"] > 0
        parts = sum(p["stages_ms"][s] for s in STAGES if s != "total")
        assert parts <= p["stages_ms"]["total"] * 1.05  # medians of parts, never more than the whole
    assert report["end_to_end_speedup"] == pytest.approx(
        report["pipelines"]["float"]["stages_ms"]["total"] / report["pipelines"]["binary"]["stages_ms"]["total"])
    assert report["lr_size"] == [32, 40] and report["sr_size"] == [128, 160]
    assert "fp32 autoencoder" in report["pipelines"]["float"]["what"]
    json.dumps(report)  # JSON-ready
    md = pipeline_markdown(report)
    assert "| **total** |" in md and "End-to-end speed-up" in md
    assert any("repeat 2/2: float" in s for s in said)


def test_int8_autoencoder_graphs_are_made_on_first_use_and_said(spec, tmp_path):
    from conftest import REPO
    import shutil

    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(REPO / "calib" / "calibration" / "astronaut_whole.png", calib)
    said = []
    report = bench_pipeline(spec, vq_precision="int8", calib=calib, lr_size=(32, 32), warmup=0, repeats=1,
                            baseline=False, progress=said.append)
    assert report["pipelines"]["binary"]["vq_precision"] == "int8" and "end_to_end_speedup" not in report
    assert any("calibrating INT8 VQ graphs on 1 images" in s for s in said)


def test_stages_produce_the_pipelines_own_sr_image(spec):
    import torch

    from bimaco_deploy.pipeline.factory import make_pipeline
    from bimaco_deploy.pipeline.images import tensor_to_uint8, uint8_to_tensor
    from bimaco_deploy.pipeline.tiling import tile_generator

    pipe = make_pipeline(spec, vq_precision="fp32")
    lr = sample_lr((24, 32))
    _, img = run_stages(pipe, lr, seed=3)
    expected = tensor_to_uint8(pipe(uint8_to_tensor(lr), generator=tile_generator(3, 0)))
    assert img.shape == (96, 128, 3) and (img == expected).all()
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("size", [(0, 64), (300, 64)])
def test_sizes_beyond_one_tile_are_refused(spec, size):
    with pytest.raises(InputError, match="one LR image of 1 to 256 px a side"):
        bench_pipeline(spec, lr_size=size, repeats=1)
