"""The VQ-f4 autoencoder against the original's outputs (vqgan_io.npz) and its strict loading."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bimaco_deploy.errors import CheckpointError, ConfigError
from bimaco_deploy.models.autoencoder import build_autoencoder, load_autoencoder
from bimaco_deploy.models.config import load_vq_config


@pytest.fixture(scope="module")
def fx(tiny_dir: Path) -> Path:
    """The bimacosr-tiny fixture folder (tests/conftest.py skips when it is absent)."""
    return tiny_dir


@pytest.fixture(scope="module")
def io(fx):
    return dict(np.load(fx / "vqgan_io.npz"))


@pytest.fixture(scope="module")
def state(fx):
    return torch.load(fx / "vqgan.pth", map_location="cpu", weights_only=True)


def _model(fx: Path, dtype: torch.dtype = torch.float32):
    return load_autoencoder(fx / "vqgan.yaml", fx / "vqgan.pth").to(dtype)


def test_module_names_mirror_the_checkpoint_keys(fx, state):
    model = build_autoencoder(load_vq_config(fx / "vqgan.yaml"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    assert ours == theirs


@torch.no_grad()
def test_float32_encode_quantize_decode_match_the_original(fx, io):
    model = _model(fx)
    x = torch.from_numpy(io["image"])
    z = model.encode(x)
    np.testing.assert_allclose(z.numpy(), io["fp32_encode"], rtol=0, atol=1e-5)  # measured 1.2e-6
    zq, idx = model.quantize(torch.from_numpy(io["fp32_encode"]))
    np.testing.assert_array_equal(idx.numpy(), io["fp32_indices"])
    np.testing.assert_allclose(zq.numpy(), io["fp32_quantized"], rtol=0, atol=1e-6)
    # decode quantizes first; fed the recorded latent so only the decoder's error is measured
    dec = model.decode(torch.from_numpy(io["fp32_encode"]))
    np.testing.assert_allclose(dec.numpy(), io["fp32_decode"], rtol=0, atol=2e-5)  # measured 5.4e-6, |y| <= 2.2
    dec_nq = model.decode(torch.from_numpy(io["fp32_encode"]), force_not_quantize=True)
    np.testing.assert_allclose(dec_nq.numpy(), io["fp32_decode_noquant"], rtol=0, atol=2e-5)


@pytest.mark.slow
@torch.no_grad()
def test_float16_matches_the_original_to_float16_rounding(fx, io):
    """CPU float16 kernels round differently between torch builds (the fixture: torch 2.15 on
    another CPU). Measured here: encode max 4.9e-4 = one float16 ulp in [0.5, 1); codebook
    indices identical; decode (fed the recorded fp16 latent) max 5.9e-3 / mean 6.4e-4 on
    outputs up to 2.3 (ulp 2e-3 there). For scale, the same decode in float32 is 1.4e-2 / 1.2e-3
    away from the float16 record: the residual is float16 rounding, not a maths difference."""
    model = _model(fx, torch.float16)
    z = model.encode(torch.from_numpy(io["image"]).half()).float().numpy()
    np.testing.assert_allclose(z, io["fp16_encode"], rtol=0, atol=1e-3)
    zq, idx = model.quantize(torch.from_numpy(io["fp16_encode"]).half())
    np.testing.assert_array_equal(idx.numpy(), io["fp16_indices"])
    np.testing.assert_allclose(zq.float().numpy(), io["fp16_quantized"], rtol=0, atol=1e-3)
    dec = model.decode(torch.from_numpy(io["fp16_encode"]).half()).float().numpy()
    err = np.abs(dec - io["fp16_decode"])
    assert err.max() <= 1.2e-2 and err.mean() <= 1.2e-3, (err.max(), err.mean())


def test_quantizer_takes_the_first_nearest_code_and_the_straight_through_form():
    cfg = load_vq_config("bimacosr-tiny")
    model = build_autoencoder(cfg, seed=3)
    with torch.no_grad():
        e = torch.zeros(cfg.n_embed, cfg.embed_dim)
        e[5] = torch.tensor([1.0, 0.0, 0.0])
        e[9] = torch.tensor([1.0, 0.0, 0.0])  # exact duplicate of code 5: a tie
        e[7] = torch.tensor([-1.0, -1.0, -1.0])
        e[:5] = 100.0
        model.quantize.embedding.weight.copy_(e)
        # two latent pixels, (0.9, 0.1, 0.0) and (-0.8, -0.9, -1.2), as [N=1, C=3, H=2, W=1]
        z = torch.tensor([[[[0.9], [-0.8]], [[0.1], [-0.9]], [[0.0], [-1.2]]]])
        zq, idx = model.quantize(z)
    assert idx.tolist() == [[[5], [7]]]  # argmin picks 5, not its twin 9
    expected = z + (torch.tensor([[[[1.0], [-1.0]], [[0.0], [-1.0]], [[0.0], [-1.0]]]]) - z)
    assert torch.equal(zq, expected)


def test_downsample_pads_right_and_bottom_only():
    model = build_autoencoder(load_vq_config("bimacosr-tiny"), seed=1)
    down = model.encoder.down[0].downsample
    x = torch.randn(1, 32, 8, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = down(x)
        manual = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2
        )
    assert y.shape == (1, 32, 4, 3)
    assert torch.equal(y, manual)


def test_random_weights_are_deterministic_and_leave_the_global_rng_alone():
    cfg = load_vq_config("bimacosr-tiny")
    before = torch.random.get_rng_state()
    a = build_autoencoder(cfg, seed=7).state_dict()
    assert torch.equal(before, torch.random.get_rng_state())
    b = load_autoencoder("bimacosr-tiny", seed=7).state_dict()
    c = build_autoencoder(cfg, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.conv_in.weight"], c["encoder.conv_in.weight"])


def test_encode_decode_shapes_follow_the_f4_factor():
    model = build_autoencoder(load_vq_config("bimacosr-tiny"))
    with torch.no_grad():
        z = model.encode(torch.zeros(2, 3, 16, 24))
        out = model.decode(z)
    assert z.shape == (2, 3, 4, 6) and out.shape == (2, 3, 16, 24)


# --- loading: accepted layouts ---


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("prefix", [False, True])
def test_loads_raw_or_wrapped_with_or_without_module_prefix(fx, tmp_path, state, wrap, prefix):
    sd = {("module." + k if prefix else k): v for k, v in state.items()}
    obj = {"state_dict": sd, "iters_start": 0} if wrap else sd
    path = tmp_path / "vq.pth"
    torch.save(obj, path)
    model = load_autoencoder(fx / "vqgan.yaml", path)
    assert torch.equal(model.quantize.embedding.weight, state["quantize.embedding.weight"])


def test_full_config_and_autoencoder_only_file_build_the_same_model(fx):
    a = load_autoencoder(fx / "config.yaml", fx / "vqgan.pth").state_dict()
    b = load_autoencoder(fx / "vqgan.yaml", fx / "vqgan.pth").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- loading: errors name the file, the keys and the shapes ---


def _save(tmp_path, sd, name="bad.pth"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def test_missing_key_is_named_with_its_shape(fx, tmp_path, state):
    sd = dict(state)
    del sd["decoder.conv_out.weight"]
    path = _save(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"decoder\.conv_out\.weight \(3, 32, 3, 3\)") as err:
        load_autoencoder(fx / "vqgan.yaml", path)
    assert str(path) in str(err.value) and "missing" in str(err.value)


def test_unexpected_key_is_named(fx, tmp_path, state):
    sd = dict(state)
    sd["encoder.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"encoder\.extra\.weight"):
        load_autoencoder(fx / "vqgan.yaml", _save(tmp_path, sd))


def test_wrong_shape_names_both_shapes(fx, tmp_path, state):
    sd = dict(state)
    sd["quantize.embedding.weight"] = torch.zeros(65, 3)
    with pytest.raises(CheckpointError, match=r"quantize\.embedding\.weight.*\(65, 3\).*\(64, 3\)"):
        load_autoencoder(fx / "vqgan.yaml", _save(tmp_path, sd))


def test_many_problems_are_listed_up_to_ten_then_counted(fx, tmp_path, state):
    sd = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    with pytest.raises(CheckpointError, match=r"and \d+ more"):
        load_autoencoder(fx / "vqgan.yaml", _save(tmp_path, sd))


def test_truncated_file_is_a_checkpoint_error_naming_the_file(fx, tmp_path):
    data = (fx / "vqgan.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_autoencoder(fx / "vqgan.yaml", path)


class _NotATensor:
    def __init__(self):
        self.payload = [1, 2, 3]


def test_pickle_of_a_non_tensor_object_is_refused(fx, tmp_path):
    path = tmp_path / "object.pth"
    with open(path, "wb") as f:
        pickle.dump({"encoder.conv_in.weight": _NotATensor()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="object.pth"):
        load_autoencoder(fx / "vqgan.yaml", path)


def test_state_dict_with_non_tensor_values_is_refused(fx, tmp_path):
    path = _save(tmp_path, {"encoder.conv_in.weight": "not a tensor"}, "strings.pth")
    with pytest.raises(CheckpointError, match="strings.pth"):
        load_autoencoder(fx / "vqgan.yaml", path)


def test_checkpoint_for_another_config_is_refused(fx, tmp_path, state):
    data = yaml.safe_load((fx / "vqgan.yaml").read_text())
    data["autoencoder"]["params"]["ddconfig"]["ch"] = 64
    cfg = tmp_path / "wide.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match=r"encoder\.conv_in\.weight.*\(32, 3, 3, 3\).*\(64, 3, 3, 3\)"):
        load_autoencoder(cfg, fx / "vqgan.pth")


def test_config_without_autoencoder_or_with_bad_widths_is_a_config_error(fx, tmp_path):
    bad = tmp_path / "none.yaml"
    bad.write_text("model: {}\n")
    with pytest.raises(ConfigError, match="autoencoder"):
        load_autoencoder(bad)
    data = yaml.safe_load((fx / "vqgan.yaml").read_text())
    data["autoencoder"]["params"]["ddconfig"]["ch"] = 24
    odd = tmp_path / "odd.yaml"
    odd.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_autoencoder(odd)


# --- attention in query chunks: bounded memory, the same result ---


def _plain_attention(block, x: torch.Tensor) -> torch.Tensor:
    """The original's formula (one [HW x HW] matrix), in float64."""
    b64 = copy.deepcopy(block).double()
    x = x.double()
    hn = b64.norm(x)
    q, k, v = b64.q(hn), b64.k(hn), b64.v(hn)
    b, c, h, w = q.shape
    weights = torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w)) * (int(c) ** -0.5)
    weights = torch.softmax(weights, dim=2)
    out = torch.bmm(v.reshape(b, c, h * w), weights.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + b64.proj_out(out)


@pytest.mark.parametrize("rows", [1, 8, 34, 35, 1000])
@torch.no_grad()
def test_attention_in_query_chunks_matches_the_plain_formula(rows):
    """5x7 = 35 positions in chunks of `rows` query rows (uneven tail for 8 and 34, one chunk for 35+)."""
    from bimaco_deploy.models.autoencoder import AttnBlock

    torch.manual_seed(0)
    block = AttnBlock(32).eval()
    for p in block.parameters():
        p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 32, 5, 7)
    block.score_bytes = rows * 35 * 4  # float32 scores of `rows` query rows
    ref = _plain_attention(block, x)
    got = block(x)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), ref.numpy(), rtol=0, atol=2e-5)


def test_attention_chunks_of_a_256_px_tile_fit_the_budget():
    """A 256 px LR tile gives a 256x256 latent: 65,536 positions, whose full score matrix is 17 GB."""
    from bimaco_deploy.models.autoencoder import ATTN_SCORE_BYTES, attention_chunk_rows

    n = 256 * 256
    for elem in (4, 2):
        rows = attention_chunk_rows(n, elem)
        assert 1 <= rows < n and rows * n * elem <= ATTN_SCORE_BYTES
    assert attention_chunk_rows(64, 4) == 64  # small latents: one chunk
    assert ATTN_SCORE_BYTES <= 64 << 20
