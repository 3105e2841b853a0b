"""Build and load the native torch op libraries (``python -m bimaco_deploy.plugins.native build``).

Two shared libraries are built into ``<repo>/build/native/`` (or ``$BIMACO_BUILD_DIR``):

* ``libbimaco_torch_cpu.so``: the ``bimaco`` operator schemas and their CPU kernels
  (``plugins_cpp/torch/ops.cpp`` + ``plugins_cpp/cpu/*.cpp``), always built when a C++
  compiler exists;
* ``libbimaco_torch_cuda.so``: the CUDA kernels for the same schemas
  (``plugins_cpp/torch/ops_cuda.cu`` + ``plugins_cpp/cuda/*.cu``), only when
  ``torch.cuda.is_available()`` and ``nvcc`` is found.

We call the compiler directly with torch's include and library paths instead of
``torch.utils.cpp_extension.load``: the output then lands in a fixed directory inside the
repository, objects compile in parallel, and a fingerprint (sources, headers, flags,
compiler, torch version) makes a rebuild a no-op when nothing changed. The CPU kernel
sources need no torch headers and compile as plain C++17.

Without a C++ compiler the build prints why and exits 0: the torch ops then fall back
to the pure torch reference implementation (see :mod:`bimaco_deploy.plugins.torch_ops`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import BackendUnavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC_DIR = REPO_ROOT / "plugins_cpp"
CPU_LIB_NAME = "libbimaco_torch_cpu.so"
CUDA_LIB_NAME = "libbimaco_torch_cuda.so"

_loaded: Dict[str, Path] = {}


def build_dir() -> Path:
    """Where the libraries are built: ``$BIMACO_BUILD_DIR`` or ``<repo>/build/native``."""
    env = os.environ.get("BIMACO_BUILD_DIR")
    return Path(env) if env else REPO_ROOT / "build" / "native"


@dataclass
class BuildResult:
    """Outcome of building one library."""

    name: str
    path: Optional[str]
    status: str  # "built", "up-to-date", "skipped", "failed"
    reason: str = ""
    commands: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------- toolchain


def find_cxx() -> Optional[str]:
    """The C++ compiler to use: ``$CXX``, else ``c++`` / ``g++`` / ``clang++`` on PATH."""
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env) or (env if Path(env).exists() else None)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def find_nvcc() -> Optional[str]:
    """nvcc from ``$CUDA_HOME``/``$CUDA_PATH``, PATH, or /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and (Path(root) / "bin" / "nvcc").exists():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


def _tool_version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _torch_paths() -> Dict[str, object]:
    import torch
    from torch.utils import cpp_extension

    return {
        "version": torch.__version__,
        "include": list(cpp_extension.include_paths()),
        "lib": cpp_extension.library_paths()[0],
        "abi": int(bool(torch._C._GLIBCXX_USE_CXX11_ABI)),
    }


# --------------------------------------------------------------------------- sources


def cpu_kernel_sources() -> List[Path]:
    """Framework-free CPU kernel sources (the standalone self-test program excluded)."""
    return [p for p in sorted((SRC_DIR / "cpu").glob("*.cpp")) if not p.name.startswith("selftest")]


def cpu_binding_sources() -> List[Path]:
    """The torch binding that defines the schemas and registers the CPU kernels."""
    return [SRC_DIR / "torch" / "ops.cpp"]


def cuda_sources() -> List[Path]:
    """CUDA kernels and the CUDA torch binding (standalone self-test programs excluded)."""
    kernels = [p for p in sorted((SRC_DIR / "cuda").glob("*.cu")) if not p.name.startswith("selftest")]
    binding = SRC_DIR / "torch" / "ops_cuda.cu"
    return kernels + ([binding] if binding.exists() else [])


def _headers(kind: str = "cpu") -> List[Path]:
    patterns = ["include/**/*.h", "cpu/*.h", "torch/*.h"]
    if kind == "cuda":
        patterns += ["cuda/*.cuh", "cuda/*.h"]
    out: List[Path] = []
    for pattern in patterns:
        out.extend(sorted(SRC_DIR.glob(pattern)))
    return out


def _fingerprint(files: Sequence[Path], extra: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(SRC_DIR)).encode())
        h.update(p.read_bytes())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()


def _stamp_path(lib: Path) -> Path:
    return lib.with_suffix(lib.suffix + ".stamp.json")


def _is_current(lib: Path, fingerprint: str) -> bool:
    stamp = _stamp_path(lib)
    if not lib.exists() or not stamp.exists():
        return False
    try:
        return json.loads(stamp.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _run(cmd: List[str], log: List[str]) -> None:
    log.append(" ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendUnavailable(
            f"native build failed (exit {proc.returncode}) running:\n  {' '.join(cmd)}\n{proc.stderr[-6000:]}"
        )


def _link_atomically(cmd_prefix: List[str], objects: List[str], libs: List[str], out: Path, log: List[str]) -> None:
    """Link into a temp file in the same directory, then rename: never a half-written library."""
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        _run(cmd_prefix + objects + ["-o", tmp] + libs, log)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- builds


def _cxx_kernel_flags() -> List[str]:
    # No -march=native: ISA-specific code is selected at run time, so the library stays
    # portable across x86-64 machines (CI builds, the user runs elsewhere).
    return ["-std=c++17", "-O3", "-fPIC", "-Wall", "-Wextra", f"-I{SRC_DIR / 'include'}"]


def _cxx_torch_flags(tp: Dict[str, object]) -> List[str]:
    # -fopenmp: at::parallel_for is an inline template whose `#pragma omp parallel` compiles
    # to a serial loop without it (torch's OpenMP backend), silently leaving cores idle
    flags = [
        "-std=c++20",
        "-O2",
        "-fPIC",
        "-fopenmp",
        f"-D_GLIBCXX_USE_CXX11_ABI={tp['abi']}",
        f"-I{SRC_DIR / 'include'}",
    ]
    flags += [f"-I{p}" for p in tp["include"]]  # type: ignore[union-attr]
    return flags


def build_cpu(force: bool = False, jobs: Optional[int] = None) -> BuildResult:
    """Build ``libbimaco_torch_cpu.so`` unless it is up to date; returns what happened."""
    out = build_dir() / CPU_LIB_NAME
    cxx = find_cxx()
    if cxx is None:
        return BuildResult(
            CPU_LIB_NAME,
            None,
            "skipped",
            "no C++ compiler found (set $CXX or install g++); torch ops use the slow pure-torch reference",
        )
    tp = _torch_paths()
    kflags, tflags = _cxx_kernel_flags(), _cxx_torch_flags(tp)
    link = [cxx, "-shared", "-fPIC", "-fopenmp"]
    libs = [f"-L{tp['lib']}", "-lc10", "-ltorch_cpu", "-ltorch", f"-Wl,-rpath,{tp['lib']}"]
    sources = cpu_kernel_sources() + cpu_binding_sources()
    fp = _fingerprint(
        sources + _headers(), [cxx, _tool_version(cxx), str(tp["version"]), *kflags, *tflags, *link, *libs]
    )
    if not force and _is_current(out, fp):
        return BuildResult(CPU_LIB_NAME, str(out), "up-to-date")
    obj_dir = build_dir() / "obj_cpu"
    obj_dir.mkdir(parents=True, exist_ok=True)
    log: List[str] = []
    jobs_list = []
    for src in sources:
        obj = obj_dir / (src.stem + ".o")
        flags = tflags if src in cpu_binding_sources() else kflags
        jobs_list.append(([cxx, *flags, "-c", str(src), "-o", str(obj)], str(obj)))
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: _run(job[0], log), jobs_list))
    _link_atomically(link, [o for _, o in jobs_list], libs, out, log)
    _stamp_path(out).write_text(json.dumps({"fingerprint": fp, "commands": log}, indent=1))
    return BuildResult(CPU_LIB_NAME, str(out), "built", commands=log)


def _cuda_arch_flags() -> List[str]:
    env = os.environ.get("BIMACO_CUDA_ARCH")  # e.g. "87" or "75;80;90"
    if env:
        archs = [a.strip() for a in env.replace(",", ";").split(";") if a.strip()]
    else:
        import torch

        major, minor = torch.cuda.get_device_capability()
        archs = [f"{major}{minor}"]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def build_cuda(force: bool = False, jobs: Optional[int] = None) -> BuildResult:
    """Build ``libbimaco_torch_cuda.so`` when a CUDA device and nvcc exist; else report why not."""
    import torch

    out = build_dir() / CUDA_LIB_NAME
    if not torch.cuda.is_available():
        return BuildResult(CUDA_LIB_NAME, None, "skipped", "torch.cuda.is_available() is False (no GPU or CPU build)")
    nvcc = find_nvcc()
    if nvcc is None:
        return BuildResult(CUDA_LIB_NAME, None, "skipped", "nvcc not found (set $CUDA_HOME)")
    sources = cuda_sources()
    if not any(p.name == "ops_cuda.cu" for p in sources):
        return BuildResult(CUDA_LIB_NAME, None, "skipped", "plugins_cpp/torch/ops_cuda.cu is absent")
    cxx = find_cxx() or "g++"
    tp = _torch_paths()
    cuda_root = Path(nvcc).resolve().parent.parent
    flags = [
        "-std=c++20",
        "-O3",
        "-Xcompiler",
        "-fPIC",
        f"-D_GLIBCXX_USE_CXX11_ABI={tp['abi']}",
        f"-I{SRC_DIR / 'include'}",
        *[f"-I{p}" for p in tp["include"]],  # type: ignore[union-attr]
        *_cuda_arch_flags(),
    ]
    link = [cxx, "-shared", "-fPIC"]
    libs = [
        f"-L{tp['lib']}",
        f"-L{cuda_root / 'lib64'}",
        "-lc10",
        "-lc10_cuda",
        "-ltorch_cpu",
        "-ltorch_cuda",
        "-ltorch",
        "-lcudart",
        f"-Wl,-rpath,{tp['lib']}",
    ]
    fp = _fingerprint(sources + _headers("cuda"), [nvcc, _tool_version(nvcc), str(tp["version"]), *flags, *link, *libs])
    if not force and _is_current(out, fp):
        return BuildResult(CUDA_LIB_NAME, str(out), "up-to-date")
    obj_dir = build_dir() / "obj_cuda"
    obj_dir.mkdir(parents=True, exist_ok=True)
    log: List[str] = []
    jobs_list = [
        ([nvcc, *flags, "-c", str(src), "-o", str(obj_dir / (src.stem + ".o"))], str(obj_dir / (src.stem + ".o")))
        for src in sources
    ]
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: _run(job[0], log), jobs_list))
    _link_atomically(link, [o for _, o in jobs_list], libs, out, log)
    _stamp_path(out).write_text(json.dumps({"fingerprint": fp, "commands": log}, indent=1))
    return BuildResult(CUDA_LIB_NAME, str(out), "built", commands=log)


def build(force: bool = False) -> List[BuildResult]:
    """Build every native library this machine can build (CPU always, CUDA when possible)."""
    build_dir().mkdir(parents=True, exist_ok=True)
    results = [build_cpu(force=force)]
    if results[0].status in ("built", "up-to-date"):
        results.append(build_cuda(force=force))
    return results


# --------------------------------------------------------------------------- loading


def library_path(kind: str = "cpu") -> Optional[Path]:
    """Path of a built library (``kind`` = "cpu" or "cuda"), or None if it was not built."""
    name = {"cpu": CPU_LIB_NAME, "cuda": CUDA_LIB_NAME}[kind]
    path = build_dir() / name
    return path if path.exists() else None


def load_libraries() -> Dict[str, Path]:
    """Load the built libraries into torch (CPU first: it defines the schemas). Idempotent.

    Returns the libraries loaded so far. Raises BackendUnavailable if a library exists but
    cannot be loaded (for example it was built against another torch).
    """
    import torch

    for kind in ("cpu", "cuda"):
        if kind in _loaded:
            continue
        if kind == "cuda" and "cpu" not in _loaded:
            break
        path = library_path(kind)
        if path is None:
            continue
        try:
            torch.ops.load_library(str(path))
        except (OSError, RuntimeError) as err:
            raise BackendUnavailable(
                f"cannot load {path}: {err}. Rebuild with `python -m bimaco_deploy.plugins.native build --force`."
            ) from err
        _loaded[kind] = path
    return dict(_loaded)


def status() -> Dict[str, object]:
    """What is built and loadable, for ``bimaco-deploy doctor`` and the benchmarks."""
    info: Dict[str, object] = {
        "build_dir": str(build_dir()),
        "cxx": find_cxx(),
        "nvcc": find_nvcc(),
        "cpu_library": str(library_path("cpu")) if library_path("cpu") else None,
        "cuda_library": str(library_path("cuda")) if library_path("cuda") else None,
        "loaded": {k: str(v) for k, v in _loaded.items()},
    }
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``build [--force]`` or ``status``; exit 0 when there is merely no compiler."""
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args[0] if args else "build"
    if cmd == "status":
        print(json.dumps(status(), indent=1))
        return 0
    if cmd != "build":
        print("usage: python -m bimaco_deploy.plugins.native [build [--force] | status]", file=sys.stderr)
        return 2
    try:
        results = build(force="--force" in args)
    except BackendUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for r in results:
        where = f" -> {r.path}" if r.path else ""
        why = f" ({r.reason})" if r.reason else ""
        print(f"[bimaco native] {r.name}: {r.status}{where}{why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
