"""The two plugin libraries against TensorRT's own plugin registry (TensorRT machines only).

libbimaco_trt_plugin.so serves IPluginRegistry::loadLibrary and registers nothing on a plain
dlopen; libbimaco_trt_plugin_static.so registers itself on a plain dlopen (see
plugins_cpp/core/registration.h). The bookkeeping is host-tested in plugins_cpp/tests; here
each loader runs against the real registry, each case in a fresh process (the global
registry lives as long as the process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest

from bimaco_deploy.errors import BackendUnavailable
from bimaco_deploy.plugins import contract
from bimaco_deploy.backends.tensorrt import builder as tb

STATIC_NAME = "libbimaco_trt_plugin_static.so"


def _libraries():
    """(dynamic, static) library paths, or the reason they cannot be tested here."""
    try:
        tb.import_tensorrt()
    except BackendUnavailable as err:
        return None, None, str(err)
    lib = tb.find_plugin_library()
    if lib is None or not lib.is_file():
        return None, None, "the TensorRT plugin library is not built (cmake -S plugins_cpp -B build/trt)"
    static = lib.with_name(STATIC_NAME)
    if not static.is_file():
        return None, None, f"{static} is not built (it is built beside {lib.name})"
    return lib, static, ""


DYNAMIC, STATIC, REASON = _libraries()
pytestmark = [pytest.mark.tensorrt, pytest.mark.skipif(bool(REASON), reason=REASON or "ok")]

_PROBE = """
import ctypes, json, sys
import tensorrt as trt
ops = {ops!r}
def have(reg):
    return [reg.get_creator(op, {version!r}, {namespace!r}) is not None for op in ops]
reg = trt.get_plugin_registry()
out = {{"start": have(reg)}}
for step, path in {steps!r}:
    if step == "dlopen":
        ctypes.CDLL(path)
    elif step == "load_library":
        out["handle_" + str(len(out))] = reg.load_library(path) is not None
    out[step + "_" + str(len(out))] = have(reg)
print(json.dumps(out))
"""


def _run(steps):
    code = _PROBE.format(ops=[contract.CONV_OP, contract.LINEAR_OP], version=contract.PLUGIN_VERSION,
                         namespace=contract.PLUGIN_NAMESPACE, steps=[(s, str(p)) for s, p in steps])
    # cwd: not the repository (a folder named tensorrt on sys.path would shadow the package)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr[-4000:]
    return list(json.loads(r.stdout.strip().splitlines()[-1]).values())


def test_plain_dlopen_of_the_loadlibrary_library_registers_nothing():
    start, after_dlopen, handle, after_load = _run([("dlopen", DYNAMIC), ("load_library", DYNAMIC)])
    assert start == [False, False]
    assert after_dlopen == [False, False], "a plain dlopen of libbimaco_trt_plugin.so registered creators"
    assert handle and after_load == [True, True]


def test_static_library_registers_on_dlopen_and_keeps_its_creators():
    start, after_dlopen, handle, after_load = _run([("dlopen", STATIC), ("load_library", DYNAMIC)])
    assert start == [False, False] and after_dlopen == [True, True]
    # TensorRT refuses a library whose creators are registered already; what matters is that
    # the load leaves the registry as it was (the old library deregistered them here)
    assert not handle
    assert after_load == [True, True]


def test_loadlibrary_first_then_static_dlopen_changes_nothing():
    start, handle, after_load, after_dlopen = _run([("load_library", DYNAMIC), ("dlopen", STATIC)])
    assert start == [False, False] and handle and after_load == [True, True]
    assert after_dlopen == [True, True]
