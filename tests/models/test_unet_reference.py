"""The reference UNet reproduces the original research code's outputs (fixtures in ../shared)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bimaco_deploy.models import iter_binary_layers
from conftest import WRONG_LAYER_KINDS, wrong_layer_copy

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


# Whole-model cases. Float summation order differs between CPUs (AVX2 vs AVX-512 kernels in
# oneDNN), and a near-zero activation can then take the other sign and avalanche (fixture README,
# "Numerical sensitivity"). So no case is required to match or to diverge: each either matches
# the original tightly, or its divergence is fully explained by a few sign changes at elements
# whose margin in the original is below 1e-6, with which the whole output matches to 1e-5.
# A real bug (a wrong sign bit, a wrong alpha) cannot be explained this way: see
# test_a_wrong_layer_is_never_explained_as_rounding.
TIGHT = 1e-5
FLIP_MARGIN = 1e-6
MAX_FLIPS = 4

# Flip sets seen on our CPUs (torch 2.13): (layer, flat index, the original's margin there from
# signs.npz, the sign the original gave it; None: the other sign than ours). They are only a
# fast first guess: each is verified like any explanation, and the search runs when none fits.
KNOWN_FLIPS = {
    2: [
        [  # AMD Zen 3 (AVX2)
            ("output_blocks.9.1.blocks.0.mlp.fc2", 337533, 1.886621845414993e-07, None),
            ("output_blocks.9.1.blocks.1.mlp.fc2", 392047, 0.0, 0),
        ],
        [  # AMD Zen 5 (AVX-512)
            ("input_blocks.1.1.blocks.0.mlp.fc1", None, 3.907496548549716e-08, None),
            ("output_blocks.9.1.blocks.0.mlp.fc2", 337533, 1.886621845414993e-07, None),
            ("output_blocks.9.1.blocks.1.mlp.fc2", 392047, 0.0, 0),
        ],
    ],
    3: [
        [  # AMD Zen 3 (AVX2)
            ("input_blocks.7.1.blocks.1.attn.proj", 5122, 3.091318205861171e-07, None),
            ("output_blocks.9.1.blocks.0.mlp.fc2", 71120, 1.7593559675788129e-07, None),
            ("output_blocks.9.1.blocks.1.attn.proj", 20809, 2.848799738330854e-07, None),
        ],
    ],
}


def _fragile(signs, case):
    names = [str(n) for n in signs["layer_names"]]
    return {
        n: (signs[f"case{case}_L{i:03d}_fragile_idx"], signs[f"case{case}_L{i:03d}_fragile_margin"])
        for i, n in enumerate(names)
        if f"case{case}_L{i:03d}_fragile_idx" in signs
    }


def _replay(model, io, case, flips, fragile):
    """Apply a recorded flip set in order; the error left, or None when the set does not apply.
    A target of None means 'the other sign than ours'; an index of None: the fragile element
    of that layer with the recorded margin."""
    overrides = {}
    best = None
    for name, idx, margin, target in flips:
        if idx is None:
            idx_all, margins = fragile.get(name, (np.zeros(0, np.int64), np.zeros(0)))
            hit = np.flatnonzero(np.isclose(margins, margin, rtol=1e-6, atol=0))
            if hit.size != 1:
                return None
            idx = int(idx_all[hit[0]])
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
    return best[0] if best else None


def _explain(model, io, signs, case):
    """(max abs error left, flips): a known flip set if one fits, else the search's result."""
    fragile = _fragile(signs, case)
    for flips in KNOWN_FLIPS.get(case, []):
        if all(m < FLIP_MARGIN for _, _, m, _ in flips):
            err = _replay(model, io, case, flips, fragile)
            if err is not None and err <= TIGHT:
                return err, [(n, i, m) for n, i, m, _ in flips]
    result = explain_divergence(
        lambda ov: _run(model, io, case, ov),
        dict(iter_binary_layers(model)),
        [str(n) for n in signs["layer_names"]],
        fragile,
        io[f"case{case}_out"],
        atol=TIGHT,
        flip_margin=FLIP_MARGIN,
        max_flips=MAX_FLIPS,
    )
    return result.max_abs_error, [(n, i, m) for n, i, m, _ in result.flips]


def _check_case(model, io, signs, case):
    """The verdict on one io.npz case: 'match', or 'explained by N flips'; raises AssertionError."""
    out, cap = _run(model, io, case)
    err = float(np.abs(out.numpy() - io[f"case{case}_out"]).max())
    if err <= TIGHT:
        for i, name in enumerate(signs["layer_names"]):
            zero_key = f"case{case}_L{i:03d}_zero_idx"
            ours = np.flatnonzero(cap[str(name)].reshape(-1).numpy() == 0)
            expected = np.sort(signs[zero_key]) if zero_key in signs else np.array([], dtype=np.int64)
            assert np.array_equal(np.sort(ours), expected), f"case {case}: exact zeros differ in {name}"
        return "match"
    left, flips = _explain(model, io, signs, case)
    assert left <= TIGHT, f"case {case} diverges by {err:.2e}; near-zero flips leave {left:.2e}: not rounding"
    assert 0 < len(flips) <= MAX_FLIPS and all(m < FLIP_MARGIN for _, _, m in flips), flips
    return f"explained by {len(flips)} flips"


@pytest.mark.parametrize("case", [1, 3, pytest.param(0, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_whole_model_matches_the_original_or_diverges_only_through_near_zero_flips(tiny_unet, io, signs, case):
    _check_case(tiny_unet, io, signs, case)


def test_case0_first_sign_disagreement_is_at_fragile_elements_only(tiny_unet, io, signs):
    """Full sign patterns are stored for case0: the first layer whose binarized input differs
    from the original's may differ only at elements the original marks fragile, with margin
    below 1e-6 here; with no disagreement at all the output must match tightly."""
    out, cap = _run(tiny_unet, io, 0)
    layers = dict(iter_binary_layers(tiny_unet))
    for i, name in enumerate(str(n) for n in signs["layer_names"]):
        x = cap[name].reshape(-1).numpy()
        negative = np.unpackbits(signs[f"case0_L{i:03d}_signbits"])[: x.size].astype(bool)
        diff = np.flatnonzero((x < 0) != negative)
        if diff.size:
            break
    else:
        assert np.abs(out.numpy() - io["case0_out"]).max() <= TIGHT
        return
    fragile = set(signs[f"case0_L{i:03d}_fragile_idx"].tolist())
    assert set(diff.tolist()) <= fragile, f"non-fragile disagreement in {name} at {diff[:5]}: a bug, not rounding"
    margins = sign_margins(layers[name], cap[name]).reshape(-1).numpy()[diff]
    assert margins.max() < FLIP_MARGIN, f"disagreeing margins {margins}: that is a bug, not rounding"
    assert diff.size <= MAX_FLIPS


@pytest.mark.slow
@pytest.mark.parametrize("kind", WRONG_LAYER_KINDS)
def test_a_wrong_layer_is_never_explained_as_rounding(tiny_unet, io, signs, kind):
    with pytest.raises(AssertionError, match="not rounding"):
        _check_case(wrong_layer_copy(tiny_unet, kind), io, signs, 3)
