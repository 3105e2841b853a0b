"""bench_unet: the backend and its float baseline timed in one run, with energy where tegrastats exists."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from bimaco_deploy.backends import BackendSpec
from bimaco_deploy.bench.unet import bench_markdown, bench_unet
from bimaco_deploy.models import load_config


def test_bench_measures_energy_per_model_from_a_live_sampler(tmp_path):
    """The energy phase's plumbing with a stand-in executable printing a real Orin Nano line
    (tegrastats exists only on a Jetson): one energy row per model, with the rails."""
    line = ("11-30-2025 13:26:01 RAM 2461/7620MB (lfb 3x2MB) SWAP 1243/3810MB (cached 5MB) "
            "CPU [19%@729,14%@729,22%@729,8%@729,15%@729,17%@729] EMC_FREQ 4%@2133 GR3D_FREQ 0%@[305] "
            "VDD_IN 5704mW/5704mW VDD_CPU_GPU_CV 831mW/831mW VDD_SOC 1624mW/1624mW")
    script = tmp_path / "fake_tegrastats.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000
        while True:
            print({line!r}, flush=True)
            time.sleep(interval)
    """))
    spec = BackendSpec("torch", load_config("bimacosr-tiny"))
    report = bench_unet(spec, size=(32, 32), warmup=1, repeats=2, energy=True, tegrastats=[sys.executable, str(script)])
    assert set(report["energy"]) == {"torch", "float-baseline"}
    for e in report["energy"].values():
        assert e["source"] == "VDD_IN" and e["images"] == 2
        assert e["rails_w"] == pytest.approx({"VDD_CPU_GPU_CV": 0.831, "VDD_IN": 5.704, "VDD_SOC": 1.624})
        assert e["idle_power_w"] == pytest.approx(5.704)
    json.dumps(report)
    assert "| float-baseline |" in bench_markdown(report).split("| model | J / image")[1]
