"""The reference UNet reproduces the original research code's outputs (fixtures in ../shared)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bimaco_deploy.models import iter_binary_layers
from bimaco_deploy.models.probes import capture_binary_inputs, explain_divergence, force_signs, sign_margins

LAYER_CASES = ["conv3x3", "linear2d", "conv3x3_stride2", "linear3d", "conv1x1"]


@pytest.fixture(scope="module")
def io(tiny_dir):
    return np.load(tiny_dir / "io.npz")


@pytest.fixture(scope="module")
def signs(tiny_dir):
    return np.load(tiny_dir / "signs.npz")


def _run(model, io, case, overrides=None):
    x, lq, t = (torch.from_numpy(io[f"case{case}_{k}"]) for k in ("x", "lq", "timesteps"))
    with torch.no_grad(), capture_binary_inputs(model) as cap, force_signs(model, overrides or {}):
        out = model(x, t, lq)
    return out, cap


@pytest.mark.parametrize("case", LAYER_CASES)
def test_single_binary_layer_matches_original_to_1e5_relative(tiny_unet, tiny_dir, case):
    data = np.load(tiny_dir / "layers.npz")
    layer = tiny_unet.get_submodule(str(data[f"{case}_name"]))
    assert type(layer).__name__ == str(data[f"{case}_type"]).replace("_ours", "")
    with torch.no_grad():
        out = layer(torch.from_numpy(data[f"{case}_input"])).numpy()
    ref = data[f"{case}_output"]
    assert out.shape == ref.shape
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < 1e-5, f"{case}: max relative error {rel:.2e}"


def test_binary_layers_run_in_the_fixture_order(tiny_unet, signs):
    assert [n for n, _ in iter_binary_layers(tiny_unet)] == [str(n) for n in signs["layer_names"]]


def test_case1_has_no_sign_flip_and_matches_tightly(tiny_unet, io, signs):
    out, cap = _run(tiny_unet, io, 1)
    assert np.abs(out.numpy() - io["case1_out"]).max() < 1e-5
    for i, name in enumerate(signs["layer_names"]):
        zero_key = f"case1_L{i:03d}_zero_idx"
        ours = np.flatnonzero(cap[str(name)].reshape(-1).numpy() == 0)
        expected = np.sort(signs[zero_key]) if zero_key in signs else np.array([], dtype=np.int64)
        assert np.array_equal(np.sort(ours), expected), f"exact zeros differ in {name}"


def test_case0_diverges_only_through_one_near_zero_activation(tiny_unet, io, signs):
    """Full sign patterns are stored for case0: the first disagreement must be a fragile element,
    and giving that one element the original's sign must reproduce the original's output."""
    out, cap = _run(tiny_unet, io, 0)
    layers = dict(iter_binary_layers(tiny_unet))
    first = None
    for i, name in enumerate(str(n) for n in signs["layer_names"]):
        x = cap[name].reshape(-1).numpy()
        negative = np.unpackbits(signs[f"case0_L{i:03d}_signbits"])[: x.size].astype(bool)
        diff = np.flatnonzero((x < 0) != negative)
        if diff.size:
            first = (i, name, diff)
            break
    assert first is not None, "case0 is documented to diverge; if it no longer does, tighten this test"
    i, name, diff = first
    assert diff.size == 1, f"{diff.size} sign disagreements in {name}, expected a single fragile one"
    fragile = set(signs[f"case0_L{i:03d}_fragile_idx"].tolist())
    assert int(diff[0]) in fragile
    margin = float(sign_margins(layers[name], cap[name]).reshape(-1)[diff[0]])
    assert margin < 1e-6, f"the disagreeing element has margin {margin:.1e}: that is a bug, not rounding"
    x0 = float(cap[name].reshape(-1)[diff[0]])
    forced, _ = _run(tiny_unet, io, 0, {name: [(int(diff[0]), -int(np.sign(x0)), margin)]})
    assert np.abs(forced.numpy() - io["case0_out"]).max() < 1e-5


# Flips found by explain_divergence on this platform (torch 2.13 CPU): (layer, flat index, the
# original's margin there from signs.npz, the sign the original gave it). Replaying them is fast;
# if they stop reproducing (another torch build sums in another order), the test searches anew.
KNOWN_FLIPS = {
    2: [
        ("output_blocks.9.1.blocks.0.mlp.fc2", 337533, 1.886621845414993e-07, None),
        ("output_blocks.9.1.blocks.1.mlp.fc2", 392047, 0.0, 0),
    ],
    3: [
        ("input_blocks.7.1.blocks.1.attn.proj", 5122, 3.091318205861171e-07, None),
        ("output_blocks.9.1.blocks.0.mlp.fc2", 71120, 1.7593559675788129e-07, None),
        ("output_blocks.9.1.blocks.1.attn.proj", 20809, 2.848799738330854e-07, None),
    ],
}


def _replay(model, io, case, flips):
    """Apply recorded flips in order; a target of None means 'the other sign than ours'."""
    overrides = {}
    for name, idx, margin, target in flips:
        if target is None:
            _, cap = _run(model, io, case, overrides)
            ours = float(cap[name].reshape(-1)[idx])
            candidates = [-int(np.sign(ours))] if ours != 0 else [-1, 1]
        else:
            candidates = [target]
        best = None
        for t in candidates:
            trial = {k: list(v) for k, v in overrides.items()}
            trial.setdefault(name, []).append((idx, t, margin))
            out, _ = _run(model, io, case, trial)
            err = float(np.abs(out.numpy() - io[f"case{case}_out"]).max())
            if best is None or err < best[0]:
                best = (err, trial)
        overrides = best[1]
    return best[0]


@pytest.mark.parametrize("case", [2, 3])
def test_diverging_cases_are_explained_by_near_zero_flips(tiny_unet, io, signs, case):
    """Cases 2 and 3 diverge because float rounding flips near-zero activations (the fixture
    README shows the same for an independent implementation). The divergence must be fully
    explained by a few sign changes at elements whose margin in the original is below 1e-6:
    with them the whole output matches to 1e-5. A real bug cannot be explained this way."""
    plain, _ = _run(tiny_unet, io, case)
    assert np.abs(plain.numpy() - io[f"case{case}_out"]).max() > 1e-3, "no longer diverges: tighten this test"
    flips = KNOWN_FLIPS[case]
    assert all(m < 1e-6 for _, _, m, _ in flips)
    if _replay(tiny_unet, io, case, flips) <= 1e-5:
        return
    names = [str(n) for n in signs["layer_names"]]
    fragile = {
        n: (signs[f"case{case}_L{i:03d}_fragile_idx"], signs[f"case{case}_L{i:03d}_fragile_margin"])
        for i, n in enumerate(names)
        if f"case{case}_L{i:03d}_fragile_idx" in signs
    }
    result = explain_divergence(
        lambda ov: _run(tiny_unet, io, case, ov),
        dict(iter_binary_layers(tiny_unet)),
        names,
        fragile,
        io[f"case{case}_out"],
    )
    assert result.explained, f"not explained by near-zero flips: {result}"
    assert len(result.flips) <= 4
    assert all(m < 1e-6 for _, _, m, _ in result.flips)
