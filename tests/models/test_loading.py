"""Checkpoints load in every original layout, strictly, safely, with errors that say what is wrong."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import yaml

from bimaco_deploy.errors import CheckpointError, ConfigError
from bimaco_deploy.models import load_unet
from bimaco_deploy.models.checkpoint import read_state_dict
from bimaco_deploy.models.config import load_config


def _forward(model, tiny_dir):
    io = np.load(tiny_dir / "io.npz")
    x, lq, t = (torch.from_numpy(io[f"case1_{k}"]) for k in ("x", "lq", "timesteps"))
    with torch.no_grad():
        return model(x, t, lq)


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("prefixed", [False, True])
def test_raw_or_wrapped_with_or_without_module_prefix_load_the_same(tiny_dir, tiny_unet, tmp_path, wrapped, prefixed):
    state = read_state_dict(tiny_dir / "bimacosr_tiny.pth")
    if prefixed:
        state = {f"module.{k}": v for k, v in state.items()}
    obj = {"state_dict": state, "iters_start": 0} if wrapped else state
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = load_unet(tiny_dir / "config.yaml", path)
    assert torch.equal(_forward(model, tiny_dir), _forward(tiny_unet, tiny_dir))


def test_smb_indices_are_rounded_to_nearest_not_truncated(tiny_dir, tiny_unet):
    state = read_state_dict(tiny_dir / "bimacosr_tiny.pth")
    drifted = [k for k, v in state.items() if k.endswith("indices_float") and not torch.equal(v, v.round())]
    assert drifted, "the fixture is documented to hold non-integral EMA indices"
    name = drifted[0][: -len(".skip_connection.indices_float")]
    layer = tiny_unet.get_submodule(name)
    assert torch.equal(layer.skip_connection.indices(), state[drifted[0]].round().long())


def test_dead_entries_are_accepted_and_ignored(tiny_dir, tmp_path):
    state = read_state_dict(tiny_dir / "bimacosr_tiny.pth")
    dead = [k for k in state if k.endswith(("move0.bias", "channel_threshold", "attn_mask"))]
    assert dead
    changed = {k: (v + 123.0 if k in dead else v) for k, v in state.items()}
    path = tmp_path / "dead.pth"
    torch.save(changed, path)
    a = _forward(load_unet(tiny_dir / "config.yaml", path), tiny_dir)
    b = _forward(load_unet(tiny_dir / "config.yaml", tiny_dir / "bimacosr_tiny.pth"), tiny_dir)
    assert torch.equal(a, b)


def test_checkpoint_for_another_config_names_keys_and_shapes(tiny_dir, tmp_path):
    cfg = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    cfg["model"]["params"]["model_channels"] = 64
    other = tmp_path / "wide.yaml"
    other.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError) as err:
        load_unet(other, tiny_dir / "bimacosr_tiny.pth")
    msg = str(err.value)
    assert "bimacosr_tiny.pth" in msg and "wrong shape" in msg
    assert "time_embed.0.weight: checkpoint (128, 32), UNet expects (256, 64)" in msg
    assert "and 890 more" in msg


def test_missing_and_unknown_keys_are_listed(tiny_dir, tmp_path):
    state = read_state_dict(tiny_dir / "bimacosr_tiny.pth")
    state.pop("out.2.weight")
    state["input_blocks.1.0.in_layers.2.mystery_branch.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_unet(tiny_dir / "config.yaml", path)
    msg = str(err.value)
    assert "out.2.weight (3, 32, 3, 3)" in msg
    assert "input_blocks.1.0.in_layers.2.mystery_branch.weight (3,)" in msg


def test_truncated_file_is_a_clear_error(tiny_dir, tmp_path):
    data = (tiny_dir / "bimacosr_tiny.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_unet(tiny_dir / "config.yaml", path)


class Payload:
    """A non-tensor object: weights_only loading must refuse it, never execute it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_of_python_objects_is_refused_not_executed(tiny_dir, tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(CheckpointError, match="not a tensor state dict"):
        load_unet(tiny_dir / "config.yaml", path)
    assert "this must never run" not in capsys.readouterr().out


def test_non_tensor_entries_are_refused(tiny_dir, tmp_path):
    path = tmp_path / "listy.pth"
    torch.save({"a": [1, 2, 3]}, path)
    with pytest.raises(CheckpointError, match="not tensors: a"):
        read_state_dict(path)


def test_missing_checkpoint_file_is_named(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint file not found"):
        load_unet(tiny_dir / "config.yaml", tmp_path / "nope.pth")


def test_config_with_a_missing_field_names_it(tiny_dir, tmp_path):
    cfg = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    del cfg["model"]["params"]["window_size"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"c\.yaml: missing field 'model\.params\.window_size'"):
        load_config(path)


def test_config_that_is_not_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="cannot read config as YAML"):
        load_config(path)


def test_random_init_is_seeded_and_has_no_exact_zero_weights():
    a = load_unet("bimacosr-tiny", seed=3)
    b = load_unet("bimacosr-tiny", seed=3)
    c = load_unet("bimacosr-tiny", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["out.2.weight"], sc["out.2.weight"])
    assert all((p != 0).all() for p in a.parameters())


def test_one_step_constants_come_from_the_config():
    one = load_config("bimacosr").diffusion.one_step()
    assert one.timestep == 14
    assert one.prior_scale == pytest.approx(1.9800000190734863, abs=0)
    assert one.input_scale == pytest.approx(2.2181973457336426, abs=0)


def test_input_size_the_model_cannot_take_is_a_clear_error(tiny_unet):
    from bimaco_deploy.errors import InputError

    x = torch.zeros(1, 3, 48, 32)
    with pytest.raises(InputError, match="48x32.*multiples of 32"):
        tiny_unet(x, torch.tensor([14]), x)
