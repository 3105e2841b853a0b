"""The divergence explainers are sharp: rounding-level flips explain a divergence, a wrong layer never does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import WRONG_LAYER_KINDS, need, wrong_layer_copy

from bimaco_deploy.models import iter_binary_layers
from bimaco_deploy.models.probes import capture_binary_inputs, explain_output_divergence, force_signs, sign_margins


def _runner(model, x, t, lq):
    def run(overrides):
        with torch.no_grad(), capture_binary_inputs(model) as cap, force_signs(model, overrides):
            return model(x, t, lq), cap

    return run


@pytest.fixture(scope="module")
def case3():
    io = np.load(need("io.npz"))
    return tuple(torch.from_numpy(io[f"case3_{k}"]) for k in ("x", "timesteps", "lq")), io["case3_out"]


def test_output_explainer_finds_a_planted_near_zero_flip(tiny_unet, case3):
    """Give the element of smallest margin the other sign in a forced 'reference' run (rounding flips
    the elements nearest zero): from its output alone, the explainer finds that flip, nothing else."""
    (x, t, lq), _ = case3
    run = _runner(tiny_unet, x, t, lq)
    layers = dict(iter_binary_layers(tiny_unet))
    _, cap = run({})
    planted = None
    for name, layer in layers.items():
        flat = cap[name].reshape(-1).numpy()
        m = sign_margins(layer, cap[name]).reshape(-1).numpy()
        m[flat == 0] = np.inf
        i = int(m.argmin())
        if planted is None or m[i] < planted[2]:
            planted = (name, i, float(m[i]), -int(np.sign(flat[i])))
    assert planted[2] < 1e-6, f"no element of margin < 1e-6 in this forward to plant a flip on: {planted}"
    target_out, _ = run({planted[0]: [(planted[1], planted[3], planted[2])]})
    result = explain_output_divergence(run, layers, list(layers), target_out.numpy(), atol=1e-6, max_flips=2)
    assert result.explained and [(f[0], f[1], f[3]) for f in result.flips] == [(planted[0], planted[1], planted[3])]


@pytest.mark.parametrize("kind", WRONG_LAYER_KINDS)
def test_output_explainer_never_explains_a_wrong_layer(tiny_unet, case3, kind):
    (x, t, lq), _ = case3
    wrong = wrong_layer_copy(tiny_unet, kind)
    with torch.no_grad():
        target = tiny_unet(x, t, lq).numpy()  # what the right model computes on this CPU
    layers = dict(iter_binary_layers(wrong))
    result = explain_output_divergence(_runner(wrong, x, t, lq), layers, list(layers), target, atol=1e-5, max_flips=2)
    assert not result.explained and result.max_abs_error > 1e-3
