"""Helpers shared by the TensorRT tests: locating compilers and TensorRT headers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[3]
PLUGINS_CPP = REPO / "plugins_cpp"

#: Where the Debian/JetPack packages and the tar files put the TensorRT headers.
SYSTEM_TRT_INCLUDE_DIRS = (
    "/usr/include/aarch64-linux-gnu",
    "/usr/include/x86_64-linux-gnu",
    "/usr/local/TensorRT/include",
    "/usr/include",
)


def find_cxx() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")


def tensorrt_include_dirs() -> List[Path]:
    """Header sets to compile the plugin against.

    ``$TENSORRT_INCLUDE_DIR`` may list several directories separated by ``os.pathsep``
    (e.g. a 10.3 and an 11.1 header set); else ``$TENSORRT_ROOT/include``; else the
    system locations of an installed TensorRT.
    """
    env = os.environ.get("TENSORRT_INCLUDE_DIR")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    root = os.environ.get("TENSORRT_ROOT")
    if root:
        return [Path(root) / "include"]
    return [Path(d) for d in SYSTEM_TRT_INCLUDE_DIRS if (Path(d) / "NvInferRuntime.h").is_file()][:1]


def cuda_include_dir() -> Optional[Path]:
    """Directory holding cuda_runtime_api.h (CUDA_HOME, nvcc's toolkit, /usr/local/cuda)."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(os.path.realpath(nvcc))
        candidates.append(real.parent.parent / "include")
        try:  # a wrapper script (e.g. /usr/local/bin/nvcc -> exec /usr/local/cuda-X/bin/nvcc)
            text = Path(nvcc).read_text(errors="ignore")[:4096]
            for token in text.split():
                if token.endswith("/bin/nvcc"):
                    candidates.append(Path(token).parent.parent / "include")
        except OSError:
            pass
    candidates += [Path("/usr/local/cuda/include")] + sorted(Path("/usr/local").glob("cuda-*/include"), reverse=True)
    for c in candidates:
        if (c / "cuda_runtime_api.h").is_file():
            return c
    return None
