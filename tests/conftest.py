"""Shared test fixtures: where the reference fixtures live, and the tiny models loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("BIMACO_FIXTURES", REPO.parent / "shared" / "fixtures"))
TINY = FIXTURES / "bimacosr-tiny"


def require(path: Path) -> Path:
    """The path, or skip the test with the reason when the shared fixtures are absent."""
    if not path.exists():
        pytest.skip(f"fixture {path} not found (set BIMACO_FIXTURES to the shared fixtures folder)")
    return path


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The bimacosr-tiny fixture folder (config, checkpoints, expected outputs)."""
    return require(TINY)


@pytest.fixture(scope="session")
def tiny_unet(tiny_dir: Path):
    """The tiny fixture UNet loaded through the public loader (shared, do not modify)."""
    from bimaco_deploy.models import load_unet

    return load_unet(tiny_dir / "config.yaml", tiny_dir / "bimacosr_tiny.pth")


def need(name: str) -> Path:
    """A file of the bimacosr-tiny fixture, or skip the test with the reason."""
    return require(TINY / name)


#: Ways :func:`wrong_layer_copy` breaks a model, for tests that must catch a real bug.
WRONG_LAYER_KINDS = ("sign_bit", "alpha")


def wrong_layer_copy(model, kind: str, layer: str = "input_blocks.1.1.blocks.0.attn.qkv"):
    """A copy of a reference UNet with one early binary layer made wrong: ``sign_bit`` gives
    the largest weight of output channel 0 the other sign (a large-margin change), ``alpha``
    scales that channel's weights, hence its alpha, by 1.03. Parity checks must fail on it."""
    import copy

    import torch

    from bimaco_deploy.models import iter_binary_layers

    bad = copy.deepcopy(model)
    target = dict(iter_binary_layers(bad))[layer]
    with torch.no_grad():
        w = target.weight.view(target.weight.shape[0], -1)
        if kind == "sign_bit":
            j = int(w[0].abs().argmax())
            w[0, j] = -w[0, j]
        elif kind == "alpha":
            w[0] *= 1.03
        else:
            raise ValueError(kind)
    return bad


def assert_backend_computes_the_reference(runner, reference, x, t, lq, out, *, fragile_margin=1e-4, rtol=1e-5) -> str:
    """``out``, a backend's UNet output for (x, t, lq), is what the reference computes up to sign
    choices at fragile elements: the backend's parity ``runner`` gives the same output and every
    binary layer's input; the reference, forced to the backend's sign wherever they differ at a
    margin below ``fragile_margin``, must then match to ``rtol`` of the output scale. Which
    elements flip depends on the CPU (summation order), so no flip count is expected. Returns
    the one-line verdict."""
    import numpy as np
    import torch

    from bimaco_deploy.models.probes import explain_backend_divergence

    x, t, lq = (np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in (x, t, lq))
    out = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
    again, inputs = runner.run_unet(x, t, lq)
    # fetching the layer inputs must not change what the backend computes
    np.testing.assert_array_equal(again, out)
    result = explain_backend_divergence(
        reference, (torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(lq)), out, inputs,
        fragile_margin=fragile_margin, atol=rtol * float(np.abs(out).max()),
    )
    assert result.explained, result.summary()
    return result.summary()


@pytest.fixture(scope="session", autouse=True)
def _isolated_graph_cache(tmp_path_factory):
    """Graphs made on first use (INT8 calibration, VQ graphs) go to a cache of this test session,
    not the user's ~/.cache: a test never reuses, or leaves behind, graphs of another run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIMACO_CACHE", str(tmp_path_factory.mktemp("bimaco-cache")))
        yield
