"""Jetson facts recorded beside benchmarks, parsed from the tools' real output formats."""

from __future__ import annotations


import pytest

from bimaco_deploy.bench import jetson

# jetson_clocks --show on an Orin (JetPack 6), clocks not locked: the default after boot
CLOCKS_DYNAMIC = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-11
cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1
cpu1: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1190400 IdleStates: WFI=1 c7=1
GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=2133000000 FreqOverride=0
DLA0_CORE:   Online=1 MinFreq=0 MaxFreq=1600000000 CurrentFreq=1600000000
NV Power Mode: MAXN
"""
# after `sudo jetson_clocks` (Nano-class board, JetPack 4 layout with "Fan:")
CLOCKS_LOCKED = """cpu0: Online=1 Governor=schedutil MinFreq=1479000 MaxFreq=1479000 CurrentFreq=1479000 IdleStates: WFI=0 c7=0
cpu1: Online=0 Governor=schedutil MinFreq=102000 MaxFreq=1479000 CurrentFreq=102000 IdleStates: WFI=0 c7=0
GPU MinFreq=921600000 MaxFreq=921600000 CurrentFreq=921600000
EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1
Fan: PWM=0
NV Power Mode: MAXN
"""


def test_l4t_release_line():
    assert jetson.parse_l4t_release("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64") == "36.4.3"
    assert jetson.parse_l4t_release("Ubuntu 22.04") is None


@pytest.mark.parametrize("text, mode, ident", [
    ("NV Power Mode: MAXN\n0\n", "MAXN", 0),
    ("NVPM WARN: fan mode is not set!\nNV Power Mode: 25W\n1\n", "25W", 1),
    ("NV Power Mode: MAXN_SUPER\n2", "MAXN_SUPER", 2),
])
def test_nvpmodel_query(text, mode, ident):
    assert jetson.parse_nvpmodel(text) == {"mode": mode, "id": ident}


def test_dynamic_clocks_are_not_locked():
    c = jetson.parse_jetson_clocks(CLOCKS_DYNAMIC)
    assert c["locked"] is False and c["online_cpus"] == 2 and c["cpu_max_khz"] == 2201600
    assert c["gpu"] == {"min": 306000000, "max": 1300500000, "current": 306000000} and c["emc_freq_override"] is False


def test_locked_clocks_ignore_offline_cores():
    c = jetson.parse_jetson_clocks(CLOCKS_LOCKED)
    assert c["locked"] is True and c["online_cpus"] == 1 and c["emc_freq_override"] is True


def test_unknown_text_judges_nothing():
    assert jetson.parse_jetson_clocks("permission denied")["locked"] is None


def test_facts_off_a_jetson_and_on_one(tmp_path):
    assert jetson.jetson_facts(release_file=tmp_path / "absent") == {"is_jetson": False}
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    outputs = {"dpkg-query": "6.2+b77", "nvpmodel": "NV Power Mode: MAXN\n0\n", "jetson_clocks": None}
    facts = jetson.jetson_facts(run=lambda cmd: outputs[cmd[0]], release_file=release)
    assert facts == {"is_jetson": True, "l4t": "36.4.3", "jetpack": "6.2+b77",
                     "nvpmodel": {"mode": "MAXN", "id": 0}, "jetson_clocks": None}
