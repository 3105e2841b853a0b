"""tegrastats parsing on real output lines, energy integration, and the background sampler.

Where the sample lines come from (copied verbatim from public posts; the numbers are theirs):

* AGX Orin 64GB (rail set VDD_GPU_SOC / VDD_CPU_CV / VIN_SYS_5V0, "NC" placeholders,
  capitalised zones, -256C for sensors that are off, GR3D over two GPCs):
  https://github.com/GDWR/jetson_exporter/issues/14 (2025-04-11). JetPack 5/6 era (L4T 35/36
  use this rail set on AGX Orin; the issue does not state the release).
* Orin Nano, JetPack 6 (L4T 36): VDD_IN / VDD_CPU_GPU_CV / VDD_SOC, lower-case zones,
  "GR3D_FREQ 0%@[305]": a line quoted in a public tegrastats-parser test found through code search
  (11-30-2025); the rail names match NVIDIA's r36.3 guide,
  https://docs.nvidia.com/jetson/archives/r36.3/DeveloperGuide/SD/PlatformPowerAndPerformance/JetsonOrinNanoSeriesJetsonOrinNxSeriesAndJetsonAgxOrinSeries.html
* Thor, JetPack 7.0 (L4T 38.4): "GR3D_FREQ @[314,314,314]" with no load figure, rails VDD_GPU /
  VDD_CPU_SOC_MSS / VIN_SYS_5V0 / VIN; from a public note that cites NVIDIA's Tegrastats Utility page
  https://docs.nvidia.com/jetson/archives/r38.4/DeveloperGuide/AT/JetsonLinuxDevelopmentTools/TegrastatsUtility.html
* Thor, JetPack 7.2 (L4T 39.2, 2026-07-02): no GR3D_FREQ field at all and three values per rail
  (cur/avg/max), quoted verbatim in a public Go test found through code search.
* Xavier-era JetPack 4 (no units on the rails): https://github.com/FindHao/tx-utils/issues/3
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from bimaco_deploy.errors import BackendUnavailable, InputError
from bimaco_deploy.bench import tegrastats as ts

AGX_ORIN = (
    "04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) "
    "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.562C Tboard@32C "
    "SOC2@40.093C Tdiode@33C SOC0@41.093C CV1@-256C GPU@-256C tj@44.343C SOC1@41.25C CV2@-256C "
    "VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"
)
ORIN_NANO_JP6 = (
    "11-30-2025 13:26:01 RAM 2461/7620MB (lfb 3x2MB) SWAP 1243/3810MB (cached 5MB) "
    "CPU [19%@729,14%@729,22%@729,8%@729,15%@729,17%@729] EMC_FREQ 4%@2133 GR3D_FREQ 0%@[305] "
    "NVDEC off NVJPG off NVJPG1 off VIC off OFA off APE 200 cpu@46.531C soc2@47.312C soc0@46.593C "
    "gpu@48.218C tj@48.843C soc1@48.843C VDD_IN 5704mW/5704mW VDD_CPU_GPU_CV 831mW/831mW VDD_SOC 1624mW/1624mW"
)
THOR_JP70 = (
    "04-21-2026 15:50:52 RAM 105265/125772MB (lfb 34x4MB) CPU [0%@972,0%@972,0%@972,0%@972,0%@972,0%@972,"
    "1%@972,0%@972,0%@972,0%@972,0%@972,8%@972,0%@972,0%@972] EMC_FREQ 0%@2750 GR3D_FREQ @[314,314,314] "
    "NVENC0_FREQ @314 NVENC1_FREQ @314 NVDEC0_FREQ @314 NVDEC1_FREQ @314 NVJPG0_FREQ @314 VIC off "
    "OFA_FREQ @315 PVA0_FREQ off APE 300 cpu@37.343C tj@38.875C soc012@37.468C gpu@38.875C soc345@37.406C "
    "VDD_GPU 1962mW/1962mW VDD_CPU_SOC_MSS 5887mW/5887mW VIN_SYS_5V0 5635mW/5635mW VIN 19780mW/19780mW"
)
THOR_JP72 = (
    "07-02-2026 13:45:44 RAM 36529/125749MB (lfb 12x4MB) SWAP 11/4096MB (cached 9MB) "
    "CPU [2%@972,1%@972,0%@972,0%@972,0%@972,0%@972,0%@972,0%@972,0%@972,0%@972,0%@972,0%@972,0%@972,2%@972] "
    "cpu@60.406C tj@63.281C soc012@58.468C gpu@62.906C soc345@63.281C "
    "VDD_GPU 37528mW/37528mW/37528mW VDD_CPU_SOC_MSS 18961mW/18961mW/18961mW "
    "VIN_SYS_5V0 18331mW/18331mW/18331mW VIN 87426mW/43713mW/87426mW"
)
XAVIER_JP4 = (
    "RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345] EMC_FREQ 0% "
    "GR3D_FREQ 0% PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C BCPU@42.5C thermal@41.9C Tdiode@41.25C "
    "VDD_SYS_GPU 153/158 VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 VDD_IN 3140/3208 VDD_SYS_CPU 536/590 "
    "VDD_SYS_DDR 557/601"
)


def test_orin_nano_jetpack6():
    s = ts.parse_line(ORIN_NANO_JP6)
    assert s.timestamp == "11-30-2025 13:26:01"
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (2461, 7620, 1243, 3810)
    assert s.cpu_load_percent == [19, 14, 22, 8, 15, 17] and set(s.cpu_freq_mhz) == {729}
    assert (s.gpu_load_percent, s.gpu_freq_mhz) == (0, [305])
    assert (s.emc_load_percent, s.emc_freq_mhz) == (4, 2133)
    assert s.temps_c["tj"] == 48.843 and s.temps_c["gpu"] == 48.218
    assert s.rails["VDD_CPU_GPU_CV"] == ts.Rail("VDD_CPU_GPU_CV", 831.0, 831.0)
    assert s.rails["VDD_SOC"].current_mw == 1624.0
    assert s.input_power() == ("VDD_IN", 5704.0)
    assert "RAM" not in s.rails and "SWAP" not in s.rails


def test_agx_orin_has_no_input_rail_so_rails_are_summed():
    s = ts.parse_line(AGX_ORIN)
    assert s.gpu_freq_mhz == [0, 0] and len(s.cpu_load_percent) == 12
    assert "GPU" not in s.temps_c and "CV0" not in s.temps_c  # -256C: sensor off
    assert s.temps_c["CPU"] == 44.562
    assert "NC" not in s.rails
    assert set(s.rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    source, mw = s.input_power()
    assert mw == 2340 + 390 + 4025 + 301 and "VDD_GPU_SOC" in source


def test_thor_jetpack70_gpu_freqs_without_load():
    s = ts.parse_line(THOR_JP70)
    assert s.gpu_load_percent is None and s.gpu_freq_mhz == [314, 314, 314]
    assert s.input_power() == ("VIN", 19780.0)
    assert s.rails["VDD_GPU"].current_mw == 1962.0
    assert "NVENC0_FREQ" not in s.rails and "APE" not in s.rails


def test_thor_jetpack72_three_values_and_no_gr3d():
    s = ts.parse_line(THOR_JP72)
    assert s.gpu_load_percent is None and s.gpu_freq_mhz == []
    vin = s.rails["VIN"]
    assert (vin.current_mw, vin.average_mw, vin.max_mw) == (87426.0, 43713.0, 87426.0)
    assert len(s.cpu_load_percent) == 14


def test_jetpack4_rails_without_units():
    s = ts.parse_line(XAVIER_JP4)
    assert s.input_power() == ("VDD_IN", 3140.0)
    assert s.rails["VDD_SYS_GPU"].average_mw == 158.0
    assert s.gpu_load_percent == 0 and s.gpu_freq_mhz == []


def test_negative_offsets_and_single_values():
    s = ts.parse_line("RAM 1/2MB CPU [off,3%@972] VDD_GPU -392mW/-392mW VDD_CPU_SOC_MSS 3924mW VIN 15004mW")
    assert s.rails["VDD_GPU"].current_mw == -392.0
    assert s.rails["VDD_CPU_SOC_MSS"] == ts.Rail("VDD_CPU_SOC_MSS", 3924.0)
    assert s.cpu_load_percent == [None, 3]


def test_garbage_is_an_input_error():
    with pytest.raises(InputError, match="not a tegrastats line"):
        ts.parse_line("tegrastats: permission denied")


# ------------------------------------------------------------------ energy


def test_constant_power_integrates_exactly():
    samples = [(t * 0.1, 5000.0) for t in range(0, 31)]  # 5 W for 3 s
    assert ts.integrate_energy_j(samples, 0.5, 2.5) == pytest.approx(10.0)


def test_ramp_uses_trapezoids_and_window_edges():
    samples = [(0.0, 0.0), (1.0, 1000.0), (2.0, 2000.0)]  # P(t) = t W
    assert ts.integrate_energy_j(samples, 0.0, 2.0) == pytest.approx(2.0)
    assert ts.integrate_energy_j(samples, 0.5, 1.5) == pytest.approx(1.0)
    # outside the samples the nearest value is held
    assert ts.integrate_energy_j(samples, 2.0, 3.0) == pytest.approx(2.0)


def test_energy_window_must_be_valid():
    with pytest.raises(InputError):
        ts.integrate_energy_j([(0.0, 1.0)], 1.0, 1.0)
    with pytest.raises(InputError, match="no power samples"):
        ts.integrate_energy_j([], 0.0, 1.0)


def test_energy_per_image_with_idle_baseline():
    line = ts.parse_line(ORIN_NANO_JP6)  # 5704 mW on VDD_IN
    samples = [(t * 0.05, line) for t in range(41)]  # 2 s
    r = ts.energy_per_image(samples, 0.0, 2.0, 4, idle_power_mw=4000.0)
    assert r.source == "VDD_IN"
    assert r.energy_j == pytest.approx(5.704 * 2)
    assert r.energy_per_image_j == pytest.approx(5.704 * 2 / 4)
    assert r.dynamic_energy_per_image_j == pytest.approx((5.704 - 4.0) * 2 / 4)
    assert r.samples == 41 and r.mean_power_w == pytest.approx(5.704)


def test_energy_needs_rails():
    s = ts.parse_line("RAM 1/2MB CPU [1%@1]")
    with pytest.raises(InputError, match="no power rails"):
        ts.energy_per_image([(0.0, s), (1.0, s)], 0.0, 1.0, 1)


# ------------------------------------------------------------------ sampler


def test_sampler_without_tegrastats_says_so():
    with pytest.raises(BackendUnavailable, match="tegrastats"):
        ts.TegrastatsSampler(command="tegrastats-that-does-not-exist").start()


def test_sampler_reads_a_live_process(tmp_path):
    """The sampler's process/thread plumbing, with a stand-in executable that prints a real line
    at the requested interval (tegrastats itself exists only on a Jetson)."""
    script = tmp_path / "fake_tegrastats.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000
        print("not a stats line", flush=True)
        while True:
            print({ORIN_NANO_JP6!r}, flush=True)
            time.sleep(interval)
    """))
    sampler = ts.TegrastatsSampler(interval_ms=20, command=[sys.executable, str(script)])
    with sampler:
        t0 = sampler.now()
        deadline = t0 + 10
        while len(sampler.snapshot()) < 5 and sampler.now() < deadline:
            __import__("time").sleep(0.02)
        t1 = sampler.now()
    assert len(sampler.snapshot()) >= 5
    assert sampler.unparsed == ["not a stats line"]
    report = sampler.energy_per_image(t0, t1, 2)
    assert report.mean_power_w == pytest.approx(5.704)
    assert sampler._proc is None  # stopped


def test_rail_power_of_a_window_shorter_than_the_sampling_interval_holds_the_nearest_samples():
    """A fast model finishes between two samples: the rails still report the power around it,
    interpolated like the energy, not an empty table."""
    a = ts.parse_line("VDD_IN 5000mW/5000mW VDD_SOC 1000mW/1000mW")
    b = ts.parse_line("VDD_IN 7000mW/6000mW VDD_SOC 2000mW/1500mW")
    samples = [(0.0, a), (1.0, b)]
    got = ts.rail_power_w(samples, 0.4, 0.6)
    assert got == pytest.approx({"VDD_IN": 6.0, "VDD_SOC": 1.5})
    assert ts.rail_power_w(samples, 2.0, 3.0) == pytest.approx({"VDD_IN": 7.0, "VDD_SOC": 2.0})
