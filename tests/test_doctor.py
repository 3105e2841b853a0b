"""``doctor``: the facts it reports about this machine and the advice it derives from them."""

from __future__ import annotations

import io
import platform

from rich.console import Console

from bimaco_deploy import doctor as dr

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 popcnt avx avx2 fma bmi2
"""
ORIN_CPUINFO = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_cpu_features_x86():
    info = dr.cpu_info(X86_CPUINFO)
    assert info["model"] == "AMD EPYC 7B13"
    assert info["features"]["avx2"] and info["features"]["popcnt"]
    assert not info["features"]["avx512f"] and not info["features"]["avx512_vpopcntdq"]


def test_cpu_features_arm():
    info = dr.cpu_info(ORIN_CPUINFO)
    assert info["features"]["asimd"] and info["features"]["asimddp"]
    assert not info["features"]["avx2"]


def test_doctor_reports_this_machine():
    d = dr.doctor()
    assert d["platform"]["python"] == platform.python_version()
    assert d["cpu"]["cores"] >= 1
    import onnxruntime

    assert d["onnxruntime"]["version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in d["onnxruntime"]["providers"]
    import torch

    assert d["torch"]["version"] == torch.__version__
    assert d["torch"]["cuda_available"] == torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        have_trt = hasattr(tensorrt, "Builder")
    except Exception:
        have_trt = False
    assert d["tensorrt"]["importable"] == have_trt
    if not have_trt:
        assert any("TensorRT backend" in a for a in d["advice"])
    if not d["trt_plugin"]["found"]:
        assert any("cmake -S plugins_cpp" in a for a in d["advice"])


def test_advice_follows_the_facts():
    d = {
        "torch": {"importable": True, "cuda_available": True},
        "tensorrt": {"importable": True, "version": "10.3.0"},
        "trt_plugin": {"found": True, "path": "/x/libbimaco_trt_plugin.so", "loadable": False, "error": "libnvinfer.so.10: cannot open"},
        "native_ops": {"cpu_library": "/x/cpu.so", "cuda_library": None},
        "onnxruntime": {"importable": True},
        "jetson": {"is_jetson": True, "tegrastats": None},
    }
    advice = dr.advice(d)
    assert any("does not load: libnvinfer.so.10" in a for a in advice)
    assert any("CUDA torch ops" in a for a in advice)
    assert any("tegrastats" in a for a in advice)
    assert not any("TensorRT backend" in a for a in advice)


def test_render_doctor_table():
    d = dr.doctor()
    buf = io.StringIO()
    Console(file=buf, width=160).print(dr.render_doctor(d))
    text = buf.getvalue()
    for item in ("CPU", "torch", "nvcc", "TensorRT", "TensorRT plugin", "ONNX Runtime", "native torch ops"):
        assert item in text
