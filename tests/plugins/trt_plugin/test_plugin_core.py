"""The TensorRT-free plugin logic (plugins_cpp/core/): build and run its C++ host tests.

The same logic backs the TensorRT plugin (field parsing, output shapes, input checks,
format combinations, launch selection), so it is tested here on machines without
TensorRT. Built with CMake when available (the real build), else straight with g++.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bimaco_deploy.plugins import contract

from trt_test_helpers import PLUGINS_CPP, find_cxx


@pytest.fixture(scope="module")
def core_tests(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("core_build")
    cmake = shutil.which("cmake")
    if cmake:
        # CUDA off: these tests are host-only, and nvcc would only slow the configure step.
        subprocess.run(
            [cmake, "-S", str(PLUGINS_CPP), "-B", str(build), "-DBIMACO_WITH_CUDA=OFF",
             "-DTENSORRT_INCLUDE_DIR=", "-DCMAKE_BUILD_TYPE=Debug"],
            check=True, capture_output=True, text=True,
        )
        subprocess.run([cmake, "--build", str(build), "--target", "bimaco_core_tests", "-j2"],
                       check=True, capture_output=True, text=True)
        return build / "bimaco_core_tests"
    cxx = find_cxx()
    if cxx is None:
        pytest.skip("neither cmake nor a C++ compiler is available to build plugins_cpp/tests/test_core.cpp")
    exe = build / "bimaco_core_tests"
    sources = [PLUGINS_CPP / "core" / "fields.cpp", PLUGINS_CPP / "core" / "shapes.cpp",
               PLUGINS_CPP / "tests" / "test_core.cpp"]
    subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{PLUGINS_CPP / 'include'}",
                    f"-I{PLUGINS_CPP / 'core'}", *map(str, sources), "-o", str(exe)], check=True)
    return exe


def test_core_host_tests_pass(core_tests):
    r = subprocess.run([str(core_tests)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout
    # the runner really ran the cases (a silent empty registry would also exit 0)
    assert r.stdout.count("PASS ") >= 15


def test_plugin_fields_follow_the_contract(core_tests):
    """The creator's field names are the contract's attributes (plugin_* are the parser's own)."""
    r = subprocess.run([str(core_tests), "--dump-fields"], capture_output=True, text=True, check=True)
    fields = json.loads(r.stdout)
    for op_name, spec in contract.OPS.items():
        expected = [a for a in spec.attributes if not a.name.startswith("plugin_")]
        got = fields[op_name]
        assert [f["name"] for f in got] == [a.name for a in expected]
        for f, a in zip(got, expected):
            assert a.onnx_type in ("INT", "INTS")
            if a.onnx_type == "INT":
                assert f["length"] == 1
            elif a.default is not None:  # INTS with a default: its length is fixed by the contract
                assert f["length"] == len(a.default)
    assert fields["BinaryConv2d"][1] == {"name": "kernel_shape", "length": 2}


def test_plugin_input_layout_follows_the_contract(core_tests):
    """Where Wzero and each side-branch input sit, for every attribute combination, is the
    contract's (contract.OpSpec.layout): the plugin reads the inputs the exporter writes."""
    r = subprocess.run([str(core_tests), "--dump-layouts"], capture_output=True, text=True, check=True)
    rows = json.loads(r.stdout)
    assert len(rows) == 2 * 2 * 2 * 2 + 2 * 2 * 2  # conv: rprelu x smb x rank x Wzero; linear: no rprelu
    for row in rows:
        spec = contract.OPS[row["op"]]
        attrs = {a: row[a] for a in spec.side}
        want = spec.layout(attrs, row["n"])
        got = {name: pos for name, pos in row["positions"].items() if pos >= 0}
        assert got == {k: v for k, v in want.items() if k not in spec.inputs}, row


def test_cmake_lists_every_core_source():
    """A new file in plugins_cpp/core/ must be added to bimaco_core in CMakeLists.txt."""
    text = (PLUGINS_CPP / "CMakeLists.txt").read_text()
    for src in sorted((PLUGINS_CPP / "core").glob("*.cpp")):
        assert f"core/{src.name}" in text, f"{src.name} is not in plugins_cpp/CMakeLists.txt"
