"""``bimaco-deploy doctor``: what this machine can run, and what to install for the rest.

:func:`doctor` gathers facts (CPU features, torch and CUDA, nvcc, TensorRT,
the plugin library, ONNX Runtime providers, the native torch op libraries,
tegrastats) into a plain dict; :func:`render_doctor` turns that dict into a
rich table. Every probe catches its own failure and reports it as a fact.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from .backends.tensorrt import builder as trt_builder

#: CPU flags the kernels dispatch on (x86 /proc/cpuinfo "flags", ARM "Features").
CPU_FEATURES = ("popcnt", "avx2", "fma", "avx512f", "avx512bw", "avx512_vpopcntdq", "asimd", "asimddp", "sve")


def cpu_info(cpuinfo_text: Optional[str] = None) -> Dict[str, Any]:
    """CPU model and the features our kernels use, from /proc/cpuinfo text (read when not given)."""
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo_text = ""
    model = None
    flags: set = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return {
        "model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "features": {f: f in flags for f in CPU_FEATURES},
    }


def _torch_info() -> Dict[str, Any]:
    try:
        import torch
    except ImportError as err:
        return {"importable": False, "error": str(err)}
    info: Dict[str, Any] = {
        "importable": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "gpus": [],
    }
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            info["gpus"].append({"name": torch.cuda.get_device_name(i), "arch": f"sm_{major}{minor}"})
    return info


def _nvcc_info() -> Dict[str, Any]:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    path = shutil.which("nvcc") or (
        str(Path(cuda_home) / "bin" / "nvcc") if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists() else None
    )
    if path is None:
        return {"path": None}
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"release (\d+\.\d+)", out)
        return {"path": path, "version": m.group(1) if m else out.strip().splitlines()[-1:]}
    except (OSError, subprocess.SubprocessError) as err:
        return {"path": path, "error": str(err)}


def _tensorrt_info() -> Dict[str, Any]:
    from .errors import BackendUnavailable

    try:
        trt = trt_builder.import_tensorrt()
    except BackendUnavailable as err:
        return {"importable": False, "error": str(err).split(". Install")[0]}
    return {"importable": True, "version": getattr(trt, "__version__", "?")}


def _plugin_info() -> Dict[str, Any]:
    lib = trt_builder.find_plugin_library()
    if lib is None:
        return {"found": False, "searched": [str(d / trt_builder.PLUGIN_LIBRARY_NAME) for d in trt_builder.DEFAULT_PLUGIN_DIRS]}
    info: Dict[str, Any] = {"found": lib.is_file(), "path": str(lib)}
    if lib.is_file():
        try:
            # A plain dlopen: proves the library and its dependencies (libnvinfer, cudart) resolve.
            ctypes.CDLL(str(lib))
            info["loadable"] = True
        except OSError as err:
            info["loadable"] = False
            info["error"] = str(err)
    return info


def _onnxruntime_info() -> Dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as err:
        return {"importable": False, "error": str(err)}
    return {"importable": True, "version": ort.__version__, "providers": list(ort.get_available_providers())}


def _native_info() -> Dict[str, Any]:
    try:
        from .plugins import native

        st = native.status()
        info = {"cpu_library": st.get("cpu_library"), "cuda_library": st.get("cuda_library"), "cxx": st.get("cxx")}
        info.update(_kernel_isa())
        return info
    except Exception as err:  # the module is optional at this level
        return {"error": f"{type(err).__name__}: {err}"}


def _kernel_isa() -> Dict[str, Any]:
    """The instruction set the packed CPU kernels run on now, and every one this CPU can run."""
    try:
        from .plugins import torch_ops

        if not torch_ops.ops_available():
            return {"cpu_isa": None, "cpu_isas": [], "isa_note": torch_ops.unavailable_reason()}
        return {"cpu_isa": torch_ops.cpu_isa(), "cpu_isas": list(torch_ops.cpu_available_isas())}
    except Exception as err:  # a broken build must not stop the other probes
        return {"cpu_isa": None, "cpu_isas": [], "isa_note": f"{type(err).__name__}: {err}"}


def _jetson_info() -> Dict[str, Any]:
    from .bench.jetson import TEGRA_RELEASE, parse_l4t_release

    text = TEGRA_RELEASE.read_text(errors="ignore").strip() if TEGRA_RELEASE.is_file() else None
    return {
        "is_jetson": text is not None,
        "l4t": parse_l4t_release(text) if text else None,
        "tegrastats": shutil.which("tegrastats"),
    }


def advice(d: Dict[str, Any]) -> List[str]:
    """What to install or build for the missing pieces, from a :func:`doctor` dict."""
    out: List[str] = []
    torch_i, trt_i, plug = d["torch"], d["tensorrt"], d["trt_plugin"]
    native_i, ort_i = d["native_ops"], d["onnxruntime"]
    if not native_i.get("cpu_library"):
        out.append("CPU kernels: run `make build` (or `python -m bimaco_deploy.plugins.native build`)")
    if not ort_i.get("importable"):
        out.append("ONNX Runtime: `pip install onnxruntime` (or onnxruntime-gpu on a CUDA machine)")
    if not torch_i.get("cuda_available"):
        out.append("CUDA kernels: need an NVIDIA GPU and a CUDA build of torch (on Jetson: NVIDIA's JetPack torch wheel)")
    elif not native_i.get("cuda_library"):
        out.append("CUDA torch ops: `python -m bimaco_deploy.plugins.native build` with nvcc on PATH")
    if not trt_i.get("importable"):
        out.append(f"TensorRT backend: install {trt_builder.TENSORRT_INSTALL_HINT}")
    if not plug.get("found"):
        out.append(
            "TensorRT plugin: `cmake -S plugins_cpp -B build/trt -DCMAKE_BUILD_TYPE=Release && cmake --build build/trt -j` "
            "(needs nvcc and the TensorRT headers/libraries)"
        )
    elif plug.get("loadable") is False:
        out.append(f"TensorRT plugin at {plug.get('path')} does not load: {plug.get('error')}")
    if d["jetson"].get("is_jetson") and not d["jetson"].get("tegrastats"):
        out.append("energy per image: tegrastats is missing from PATH (it ships with JetPack)")
    return out


def doctor() -> Dict[str, Any]:
    """Facts about this machine for every backend, plus ``advice`` on what to install."""
    d: Dict[str, Any] = {
        "platform": {"system": platform.system(), "python": platform.python_version(), "machine": platform.machine()},
        "cpu": cpu_info(),
        "torch": _torch_info(),
        "nvcc": _nvcc_info(),
        "tensorrt": _tensorrt_info(),
        "trt_plugin": _plugin_info(),
        "onnxruntime": _onnxruntime_info(),
        "native_ops": _native_info(),
        "jetson": _jetson_info(),
    }
    d["advice"] = advice(d)
    return d


def _yes(v: Any) -> str:
    return "[green]yes[/]" if v else "[red]no[/]"


def render_doctor(d: Dict[str, Any]) -> Any:
    """A rich Table of a :func:`doctor` dict (print it with ``rich.console.Console().print``)."""
    from rich.table import Table

    t = Table(title="bimaco-deploy doctor", show_lines=False)
    t.add_column("item")
    t.add_column("status")
    t.add_column("details", overflow="fold")
    cpu = d["cpu"]
    feats = ", ".join(k for k, v in cpu["features"].items() if v) or "none of " + ", ".join(CPU_FEATURES)
    t.add_row("CPU", f"{cpu['cores']} cores", f"{cpu['model']} ({cpu['machine']}); {feats}")
    tr = d["torch"]
    if tr.get("importable"):
        gpus = ", ".join(f"{g['name']} {g['arch']}" for g in tr["gpus"]) or "no GPU"
        t.add_row("torch", tr["version"], f"CUDA build {tr['cuda_build'] or 'none'}; CUDA available {_yes(tr['cuda_available'])}; {gpus}")
    else:
        t.add_row("torch", _yes(False), tr.get("error", ""))
    nv = d["nvcc"]
    t.add_row("nvcc", nv.get("version", _yes(False)) if nv.get("path") else _yes(False), nv.get("path") or "not on PATH")
    trt = d["tensorrt"]
    t.add_row("TensorRT", trt.get("version") if trt.get("importable") else _yes(False), trt.get("error", ""))
    pl = d["trt_plugin"]
    if pl.get("found"):
        t.add_row("TensorRT plugin", _yes(pl.get("loadable")), pl.get("path", "") + (f": {pl['error']}" if pl.get("error") else ""))
    else:
        t.add_row("TensorRT plugin", _yes(False), "not built; searched " + ", ".join(pl.get("searched", [pl.get("path", "")])))
    ort = d["onnxruntime"]
    t.add_row("ONNX Runtime", ort.get("version", _yes(False)), ", ".join(ort.get("providers", [])) or ort.get("error", ""))
    na = d["native_ops"]
    t.add_row("native torch ops", _yes(na.get("cpu_library")), f"CPU: {na.get('cpu_library') or 'not built'}; CUDA: {na.get('cuda_library') or 'not built'}")
    isa = na.get("cpu_isa")
    t.add_row("CPU kernel ISA", isa or _yes(False),
              f"in use: {isa}; this CPU runs {', '.join(na.get('cpu_isas', []))} (check --backend torch --isa NAME)"
              if isa else (na.get("isa_note") or "native CPU kernels not loaded: packed layers use the pure-torch fallback"))
    j = d["jetson"]
    t.add_row("Jetson", _yes(j.get("is_jetson")), f"L4T {j.get('l4t')}; tegrastats {j.get('tegrastats') or 'absent'}" if j.get("is_jetson") else "")
    for i, a in enumerate(d.get("advice", [])):
        t.add_row("to do" if i == 0 else "", "", a)
    return t
