"""One mapping of outcomes to exit codes for every command: 0 success, 1 parity failed (tests/check),
2 bad input as one line naming the file/option/shape, 3 internal error (the trace only under --verbose),
130 Ctrl-C saying how far the work got; and the global options --version, --verbose, --quiet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from bimaco_deploy.cli import app
from bimaco_deploy.cli._app import _Group, _global_options

from conftest import need

REPO = Path(__file__).resolve().parents[2]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_version_is_printed():
    from bimaco_deploy import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"bimaco-deploy {__version__} (op contract v")


def test_verbose_and_quiet_exclude_each_other():
    result = CliRunner().invoke(app, ["--verbose", "--quiet", "doctor"])
    assert result.exit_code == 2 and "--verbose and --quiet exclude each other" in result.output


def test_bad_input_is_one_line_and_exit_2():
    result = CliRunner().invoke(app, ["inspect", "--config", "/nowhere/c.yaml"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: /nowhere/c.yaml: config file not found"


def _app_with(fn):
    """A fresh app on the same command group and global options, with one command: how an
    unexpected exception in any command is reported."""
    test_app = typer.Typer(cls=_Group)
    test_app.callback()(_global_options)
    test_app.command("boom")(fn)
    return test_app


def _raise_bug() -> None:
    {}["missing key"]  # a bug: not a BimacoError


def test_an_internal_error_is_exit_3_one_line_and_the_trace_only_under_verbose():
    test_app = _app_with(_raise_bug)
    quiet = CliRunner().invoke(test_app, ["boom"])
    assert quiet.exit_code == 3
    lines = quiet.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("internal error: KeyError: 'missing key' (run with --verbose")
    loud = CliRunner().invoke(test_app, ["--verbose", "boom"])
    assert loud.exit_code == 3 and "Traceback" in loud.output and "_raise_bug" in loud.output


def _allocate_too_much() -> None:
    import torch

    torch.empty(1 << 50, dtype=torch.uint8)  # a real allocation failure (1 PiB)


def test_a_failed_allocation_says_what_to_make_smaller():
    result = CliRunner().invoke(_app_with(_allocate_too_much), ["boom"])
    assert result.exit_code == 2 and result.output.startswith("error: out of memory (an allocation of 1024.0 TiB failed)")


@pytest.fixture(scope="module")
def lr_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctrlc") / "lr"
    root.mkdir()
    for i in range(12):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


@pytest.mark.slow
def test_ctrl_c_says_how_many_images_were_done(lr_folder, tmp_path):
    out = tmp_path / "sr"
    args = [sys.executable, "-m", "bimaco_deploy.cli", "infer", str(lr_folder), str(out), "--config",
            str(need("config.yaml")), "--ckpt", str(need("bimacosr_tiny.pth")), "--vq-ckpt", str(need("vqgan.pth")),
            "--vq-precision", "fp32"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.readline()  # printed as soon as the first image is written
    assert "-> " in first, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    done = len(list(out.glob("*.png")))
    assert 1 <= done < 12
    assert f"interrupted: super-resolving: {done} of 12 images done" in err, err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written temp file


@pytest.mark.slow
def test_a_large_image_under_a_memory_limit_is_told_to_use_a_smaller_tile(tmp_path):
    """The issue's case: a 200x200 image with the default tile needs many GiB (VQ decoder at 800x800);
    under an address-space limit the allocation fails for real and the message says what to do."""
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(big)
    out = tmp_path / "sr.png"
    code = (
        "import resource, sys, torch, onnxruntime\n"
        "from bimaco_deploy.cli import main\n"
        "vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (800 << 20),) * 2)\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "infer", str(big), str(out), "--config", str(need("config.yaml")),
                           "--vq-precision", "fp32"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {big}: out of memory super-resolving this 200x200 image"), last
    assert "use a smaller --tile (for example --tile 100)" in last
    assert not out.exists() and "Traceback" not in proc.stderr
