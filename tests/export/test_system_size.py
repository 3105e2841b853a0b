"""Whole-system size: UNet + encoder + decoder at every autoencoder precision, against the float system."""

from __future__ import annotations

import pytest

from bimaco_deploy.export.system_size import float_system_bytes, system_sizes, vq_bytes, vq_parameter_counts
from bimaco_deploy.models.config import load_config
from bimaco_deploy.models.inventory import inventory


@pytest.fixture(scope="module")
def published():
    return load_config("bimacosr")


def test_the_published_float_system_is_the_issue_figure(published):
    f = float_system_bytes(published)
    assert f["unet"] / 1e6 == pytest.approx(474.4, abs=0.1)
    assert f["autoencoder"] / 1e6 == pytest.approx(221.3, abs=0.1)
    assert f["total"] / 1e6 == pytest.approx(695.7, abs=0.1)
    assert sum(vq_parameter_counts(published.autoencoder).values()) / 1e6 == pytest.approx(55.3, abs=0.05)


def test_every_precision_is_reported_and_int8_is_at_least_9x_below_the_float_system(published):
    inv = inventory(published, None)
    sizes = system_sizes(published, inv.deployed_bytes_fp16_side)
    rows = {r["vq_precision"]: r for r in sizes["by_vq_precision"]}
    assert list(rows) == ["fp32", "fp16", "bf16", "int8"]
    assert rows["fp32"]["total"] > rows["fp16"]["total"] == rows["bf16"]["total"] > rows["int8"]["total"]
    assert rows["int8"]["vs_float_system"] >= 9.0
    # the UNet-only figure is there too, and is not the whole system's
    assert sizes["unet_only"]["vs_float_unet"] > rows["int8"]["vs_float_system"]


def test_int8_bytes_count_one_byte_per_conv_weight_plus_float_scales(published):
    cfg = published.autoencoder
    fp32, int8 = vq_bytes(cfg, "fp32"), vq_bytes(cfg, "int8")
    for part in ("encoder", "decoder"):
        assert fp32[part] / 4.2 < int8[part] < fp32[part] / 3.5


def test_measured_file_sizes_replace_the_estimate_for_their_precision(published):
    sizes = system_sizes(published, 10_000_000, measured={"precision": "int8", "encoder": 11, "decoder": 22})
    rows = {r["vq_precision"]: r for r in sizes["by_vq_precision"]}
    assert rows["int8"]["source"] == "files" and rows["int8"]["total"] == 10_000_033
    assert rows["fp32"]["source"] == "estimate"
