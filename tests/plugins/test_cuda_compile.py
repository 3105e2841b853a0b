"""The CUDA sources compile with nvcc, warnings as errors, for every target architecture.

This runs on machines without a GPU (CI): it proves the kernels, the self-test program
and the torch CUDA binding build, and that the 1-bit tensor-core MMA each architecture
should use is really emitted. Whether the kernels compute the right thing is
tests/plugins/test_cuda_kernels.py, which needs a GPU.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest

from bimaco_deploy.plugins import native

REPO = Path(__file__).resolve().parents[2]
CUDA_DIR = REPO / "plugins_cpp" / "cuda"
INCLUDE_DIR = REPO / "plugins_cpp" / "include"
#: Turing, Ampere, Orin, Hopper: one of each MMA flavour and the Jetson target.
ARCHS = ("75", "80", "87", "90")
#: The instruction each architecture's GEMM kernel must use (see gemm.cu).
EXPECTED_MMA = {
    "75": "mma.sync.aligned.m8n8k128.row.col.s32.b1.b1.s32.xor.popc",
    "80": "mma.sync.aligned.m16n8k128.row.col.s32.b1.b1.s32.and.popc",
    "87": "mma.sync.aligned.m16n8k128.row.col.s32.b1.b1.s32.and.popc",
    "90": "mma.sync.aligned.m16n8k128.row.col.s32.b1.b1.s32.and.popc",
}
WARNING_FLAGS = ["-Xcompiler", "-Wall,-Wextra,-Werror", "-Werror", "all-warnings", "-Xptxas", "-warn-spills"]
#: ptxas resource report (registers, spills per kernel), parsed by the tests below
VERBOSE_FLAGS = ["-Xptxas", "-v"]
#: The GEMM kernel's register bound (gemm.cu, kMinBlocksPerSm = 4 blocks of 128 threads per SM).
GEMM_MAX_REGISTERS = 128

NVCC = native.find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set $CUDA_HOME or put nvcc on PATH)")


class Compiled(NamedTuple):
    returncode: int
    output: str
    keep_dir: Path


def _nvcc(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(NVCC), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def _sources() -> List[Path]:
    return sorted(CUDA_DIR.glob("*.cu"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Compiled]:
    """Every plugins_cpp/cuda/*.cu compiled once for all ARCHS (one nvcc per file, in parallel).

    One invocation per file with all -gencode targets shares the host pass; --keep leaves
    each architecture's PTX behind for the instruction checks.
    """
    root = tmp_path_factory.mktemp("nvcc")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]

    def build(src: Path) -> Compiled:
        keep = root / src.stem
        keep.mkdir()
        proc = _nvcc(
            ["-c", "-std=c++17", "-O3", f"-I{INCLUDE_DIR}", *gencode, *WARNING_FLAGS, *VERBOSE_FLAGS, "--keep",
             f"--keep-dir={keep}", str(src), "-o", str(keep / (src.stem + ".o"))],
            cwd=keep,
        )
        return Compiled(proc.returncode, proc.stdout + proc.stderr, keep)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip((s.name for s in _sources()), pool.map(build, _sources())))
    return results


def test_cuda_sources_exist() -> None:
    names = {p.name for p in _sources()}
    assert {"binary_ops.cu", "pack.cu", "gemm.cu", "side.cu", "selftest.cu"} <= names, names


@pytest.mark.parametrize("name", ["binary_ops.cu", "pack.cu", "gemm.cu", "side.cu", "selftest.cu"])
def test_compiles_without_warnings_for_all_archs(compiled: Dict[str, Compiled], name: str) -> None:
    result = compiled[name]
    assert result.returncode == 0, f"nvcc failed on plugins_cpp/cuda/{name} for sm_{ARCHS}:\n{result.output}"
    assert not re.search(r"warning[^\n]*spill", result.output, re.I), f"register spills in {name}:\n{result.output}"
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.output)
    if "__global__" in (CUDA_DIR / name).read_text():  # files with kernels get a ptxas report
        assert spills, f"no ptxas resource report for {name}"
    assert all(a == "0" and b == "0" for a, b in spills), f"register spills in {name}:\n{result.output}"


def _kernel_resources(output: str) -> List[tuple]:
    """(arch, kernel, registers) for every kernel in a ptxas -v report."""
    out, current = [], None
    for line in output.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if m:
            current = (m.group(2), m.group(1))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            out.append((*current, int(m.group(1))))
            current = None
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_gemm_kernel_register_bound(compiled: Dict[str, Compiled], arch: str) -> None:
    """At most GEMM_MAX_REGISTERS per thread: four 128-thread blocks per SM (the unbounded
    kernel used 150-168, three blocks), and without spills (the test above)."""
    result = compiled["gemm.cu"]
    assert result.returncode == 0, result.output
    gemm = [(k, r) for a, k, r in _kernel_resources(result.output) if a == f"sm_{arch}" and "gemm_kernel" in k]
    assert len(gemm) == 2, gemm  # float and half
    for kernel, regs in gemm:
        print(f"sm_{arch} {kernel}: {regs} registers")
        assert regs <= GEMM_MAX_REGISTERS, f"sm_{arch} {kernel} uses {regs} registers"


@pytest.mark.parametrize("arch", ARCHS)
def test_gemm_uses_one_bit_tensor_core_mma(compiled: Dict[str, Compiled], arch: str) -> None:
    """The GEMM kernel issues the arch's 1-bit MMA (and sm_80+ never the deprecated XOR form)."""
    result = compiled["gemm.cu"]
    assert result.returncode == 0, result.output
    ptx_files = [p for p in result.keep_dir.glob("*.ptx") if re.search(rf"(compute|sm)_{arch}\b", p.name)]
    assert ptx_files, f"no PTX for sm_{arch} kept in {sorted(p.name for p in result.keep_dir.iterdir())}"
    ptx = "\n".join(p.read_text() for p in ptx_files)
    assert EXPECTED_MMA[arch] in ptx, f"sm_{arch} GEMM does not issue {EXPECTED_MMA[arch]}"
    if arch != "75":
        assert ".xor.popc" not in ptx, f"sm_{arch} GEMM issues the XOR-popc MMA, absent/deprecated on sm_90"


@pytest.mark.parametrize("arch", ARCHS)
def test_gemm_shared_tile_is_16_byte_aligned(compiled: Dict[str, Compiled], arch: str) -> None:
    """The GEMM kernel stages its X tile with 16-byte vector stores (st.shared.v4): every static
    shared array it declares must be 16-byte aligned, not merely placed at offset 0 by luck."""
    result = compiled["gemm.cu"]
    assert result.returncode == 0, result.output
    ptx = "\n".join(p.read_text() for p in result.keep_dir.glob("*.ptx") if re.search(rf"(compute|sm)_{arch}\b", p.name))
    assert "st.shared.v4" in ptx, "the tile is no longer staged with vector stores: revisit this test"
    decls = re.findall(r"\.shared \.align (\d+) \.b8 (\S+)\[", ptx)
    assert decls, "no static shared declarations found in the GEMM PTX"
    for align, name in decls:
        assert int(align) >= 16, f"sm_{arch}: shared {name} is only {align}-byte aligned"


def test_pack_kernel_has_no_mma(compiled: Dict[str, Compiled]) -> None:
    """Sanity check of the PTX inspection above: the pack kernel holds no MMA at all."""
    ptx = "\n".join(p.read_text() for p in compiled["pack.cu"].keep_dir.glob("*.ptx"))
    assert ptx and "mma.sync" not in ptx


def _torch_include_dirs() -> List[str]:
    torch = pytest.importorskip("torch")
    from torch.utils import cpp_extension

    dirs = list(cpp_extension.include_paths())
    if not (Path(dirs[0]) / "ATen" / "ATen.h").exists():
        pytest.skip(f"torch at {torch.__file__} ships no C++ headers")
    return dirs


def test_torch_cuda_binding_compiles(tmp_path: Path) -> None:
    """ops_cuda.cu uses only device-generic c10 headers, so it compiles against a CPU-only torch too."""
    import torch

    includes = _torch_include_dirs()
    abi = int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    src = REPO / "plugins_cpp" / "torch" / "ops_cuda.cu"
    proc = _nvcc(
        ["-c", "-std=c++20", "-O2", "-Xcompiler", "-fPIC,-Wall,-Wextra,-Werror", "-Werror", "all-warnings",
         f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{INCLUDE_DIR}", *[a for d in includes for a in ("-isystem", d)],
         "-gencode=arch=compute_80,code=sm_80", str(src), "-o", str(tmp_path / "ops_cuda.o")],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"nvcc failed on plugins_cpp/torch/ops_cuda.cu:\n{proc.stdout}{proc.stderr}"
