"""The TensorRT plugin sources compile against real TensorRT headers with -Wall -Wextra -Werror.

Also holds the two plugin libraries to their loaders (see plugins_cpp/core/registration.h):
symbols of the registration objects say which one can touch the global registry.

Runs where TensorRT headers exist: an installed TensorRT (JetPack / Debian packages,
$TENSORRT_ROOT), or header sets named in $TENSORRT_INCLUDE_DIR (several allowed,
separated by ':', e.g. the public headers of TensorRT 10.3 and 11.1). Elsewhere it skips
and says why. Linking needs libnvinfer and is covered by the CMake build on such machines;
the slow test below links everything except libnvinfer and lists what stays unresolved.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trt_test_helpers import PLUGINS_CPP, cuda_include_dir, find_cxx, tensorrt_include_dirs

TRT_SOURCES = sorted((PLUGINS_CPP / "tensorrt").glob("*.cpp"))
HEADER_SETS = tensorrt_include_dirs()
SKIP_NO_HEADERS = (
    "no TensorRT headers: install TensorRT, or set TENSORRT_INCLUDE_DIR to one or more include dirs "
    "(':'-separated) holding NvInferRuntime.h"
)


def _version(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text()
    major = re.search(r"define (?:NV_TENSORRT_MAJOR|TRT_MAJOR_ENTERPRISE) (\d+)", text)
    minor = re.search(r"define (?:NV_TENSORRT_MINOR|TRT_MINOR_ENTERPRISE) (\d+)", text)
    return f"{major.group(1)}.{minor.group(1)}" if major and minor else "?"


def _compile_flags(include: Path, cuda_inc: Path) -> list:
    return [
        "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-DTENSORRT_BUILD_LIB",
        f"-I{PLUGINS_CPP / 'include'}", f"-I{PLUGINS_CPP / 'core'}", f"-I{PLUGINS_CPP / 'tensorrt'}",
        # system: the TensorRT headers warn about their own deprecated APIs
        "-isystem", str(include), "-isystem", str(cuda_inc),
    ]


@pytest.fixture(scope="module")
def toolchain():
    cxx = find_cxx()
    if cxx is None:
        pytest.skip("no C++ compiler")
    cuda_inc = cuda_include_dir()
    if cuda_inc is None:
        pytest.skip("cuda_runtime_api.h not found (set CUDA_HOME): the plugin includes the CUDA runtime API")
    return cxx, cuda_inc


@pytest.mark.skipif(not HEADER_SETS, reason=SKIP_NO_HEADERS)
@pytest.mark.parametrize("include", HEADER_SETS, ids=lambda p: f"trt{_version(p)}" if p.exists() else str(p))
def test_plugin_compiles_against_tensorrt_headers(include: Path, toolchain, tmp_path):
    if not (include / "NvInferRuntime.h").is_file():
        pytest.fail(f"{include} has no NvInferRuntime.h (TENSORRT_INCLUDE_DIR points at the wrong place)")
    cxx, cuda_inc = toolchain
    for src in TRT_SOURCES:
        obj = tmp_path / (src.stem + ".o")
        r = subprocess.run([cxx, *_compile_flags(include, cuda_inc), "-c", str(src), "-o", str(obj)],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{src.name} against TensorRT {_version(include)}:\n{r.stderr[-4000:]}"
    if shutil.which("nm"):
        _check_registration_objects(tmp_path)


def _symbols(obj: Path, *flags: str) -> set:
    out = subprocess.run(["nm", *flags, str(obj)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def _check_registration_objects(objdir: Path) -> None:
    """Each library serves one loader (plugins_cpp/core/registration.h), by construction:

    * the loadLibrary library's registration object exports getCreators and setLoggerFinder
      and never references getPluginRegistry: nothing in it can register or deregister
      anything in the global registry, whoever loads it;
    * the dlopen library's registration object references getPluginRegistry (its
      constructor registers) and defines no getCreators, so loadLibrary cannot take it.
    """
    dynamic, static = objdir / "registration_dynamic.o", objdir / "registration_static.o"
    defined_dyn = _symbols(dynamic, "-g", "--defined-only")
    assert {"getCreators", "setLoggerFinder"} <= defined_dyn
    assert "getPluginRegistry" not in _symbols(dynamic, "-u")
    assert "getPluginRegistry" in _symbols(static, "-u")
    assert "getCreators" not in _symbols(static, "-g", "--defined-only")
    # the other translation units stay out of the registry business altogether
    for other in ("binary_plugin.o", "creators.o", "logging.o"):
        assert "getPluginRegistry" not in _symbols(objdir / other, "-u"), other


@pytest.mark.slow
@pytest.mark.skipif(not HEADER_SETS, reason=SKIP_NO_HEADERS)
def test_plugin_links_except_libnvinfer(toolchain, tmp_path):
    """Build the CUDA kernels + plugin objects with CMake and link them into a shared object
    without libnvinfer: the only unresolved TensorRT symbols must be libnvinfer's exports."""
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        pytest.skip("needs cmake and nvcc to build the CUDA kernels")
    include = HEADER_SETS[0]
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(PLUGINS_CPP), "-B", str(build), f"-DTENSORRT_INCLUDE_DIR={include}",
                    "-DTENSORRT_LIBRARY=TENSORRT_LIBRARY-NOTFOUND", "-DCMAKE_CUDA_ARCHITECTURES=87"],
                   check=True, capture_output=True, text=True)
    targets = ["bimaco_trt_plugin_objects", "bimaco_trt_registration_dynamic", "bimaco_trt_registration_static",
               "bimaco_cuda_kernels", "bimaco_core"]
    r = subprocess.run(["cmake", "--build", str(build), "-j2", "--target", *targets], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    objects = sorted(str(p) for p in build.rglob("bimaco_trt_plugin_objects.dir/**/*.o"))
    assert len(objects) == 3, objects
    cuda_lib = cuda_include_dir().parent / "lib64"
    cxx = toolchain[0]
    for kind, entry_points, registry_use in (("dynamic", {"getCreators", "setLoggerFinder"}, {"getLogger"}),
                                             ("static", set(), {"getPluginRegistry", "getLogger"})):
        reg = [str(p) for p in build.rglob(f"bimaco_trt_registration_{kind}.dir/**/*.o")]
        assert len(reg) == 1, reg
        so = tmp_path / f"libprobe_{kind}.so"
        # the link line of the plugin libraries in CMakeLists.txt, less libnvinfer and --no-undefined
        subprocess.run([cxx, "-shared", "-o", str(so), *objects, *reg, str(build / "libbimaco_cuda_kernels.a"),
                        str(build / "libbimaco_core.a"), f"-L{cuda_lib}", "-lcudart", "-Wl,--exclude-libs,ALL"],
                       check=True)
        exported = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True,
                                  check=True).stdout
        names = {line.split()[-1] for line in exported.splitlines()
                 if line.split()[-2] in ("T", "W", "B", "D", "V")}
        assert entry_points <= names, kind
        assert "getCreators" in names if kind == "dynamic" else "getCreators" not in names
        leaked = {n for n in names if "bimaco" in n}
        assert not leaked, f"kernel/core symbols exported from the {kind} plugin: {sorted(leaked)[:5]}"
        out = subprocess.run(["nm", "-u", "-D", str(so)], capture_output=True, text=True, check=True).stdout
        undefined = {line.split()[-1] for line in out.splitlines()}
        ours = {u for u in undefined if "bimaco" in u}
        assert not ours, f"kernel API symbols unresolved: {ours}"
        # C++ runtime (_Z..., _ITM_..., __cxa...), libc/libcudart (versioned "@"), CUDA runtime (cuda*)
        trt_symbols = {u for u in undefined if not (u.startswith("_") or u.startswith("cuda") or "@" in u)}
        assert trt_symbols == registry_use, (kind, trt_symbols)
