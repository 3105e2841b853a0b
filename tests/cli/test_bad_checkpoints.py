"""Fuzz: random bytes, empty, truncated and non-checkpoint pickles given as --ckpt or --vq-ckpt to every
command that takes them never produce a traceback: exit 2, one message naming the file, nothing written,
and never the advice to turn safe loading off."""

from __future__ import annotations

import datetime
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from typer.testing import CliRunner

from bimaco_deploy.cli import app

from conftest import need

#: (command, option): every place a checkpoint path is taken
CKPT_USES = [("inspect", "--ckpt"), ("export", "--ckpt"), ("export", "--vq-ckpt"), ("infer", "--ckpt"),
             ("infer", "--vq-ckpt"), ("check", "--ckpt"), ("check", "--vq-ckpt"), ("bench", "--ckpt")]


class Gadget:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    from bimaco_deploy.export.exporter import export

    out = tmp_path_factory.mktemp("fuzz") / "art"
    export(need("config.yaml"), need("bimacosr_tiny.pth"), out, with_vq=False, progress=False, print_report=False)
    return out


@pytest.fixture(scope="module")
def lr_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("lr") / "lr.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def _args(command: str, option: str, bad: Path, work: Path, artifacts: Path, lr: Path):
    cfg = str(need("config.yaml"))
    base = {
        "inspect": ["inspect", "--config", cfg, "--json", str(work / "i.json")],
        "export": ["export", "--config", cfg, "--out", str(work / "art")] + (
            ["--ckpt", str(need("bimacosr_tiny.pth"))] if option == "--vq-ckpt" else []),
        "infer": ["infer", str(lr), str(work / "sr.png"), "--config", cfg],
        "check": ["check", "--artifacts", str(artifacts), "--levels", "3", "--images", str(lr),
                  "--json", str(work / "c.json")] + (["--ckpt", str(need("bimacosr_tiny.pth"))] if option == "--vq-ckpt" else []),
        "bench": ["bench", "--config", cfg, "--json", str(work / "b.json")],
    }[command]
    return base + [option, str(bad)]


def _assert_clean_refusal(result, bad: Path, work: Path) -> None:
    out = result.output
    assert result.exit_code == 2, out
    assert str(bad) in out, out
    assert "Traceback" not in out and "weights_only" not in out and "Re-running" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert [p.name for p in work.iterdir()] == [], "nothing may be written"


def _fixed_bad_files(folder: Path):
    real = need("bimacosr_tiny.pth").read_bytes()
    files = {
        "empty.pth": b"",
        "text.pth": b"this is not a checkpoint\n",
        "json.pth": b'{"state_dict": {}}',
        "random.pth": np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "truncated.pth": real[: len(real) // 2],
        "objects.pth": pickle.dumps({"state_dict": {"w": datetime.date(2020, 1, 1)}}),
        "gadget.pth": pickle.dumps(Gadget()),
    }
    out = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out.append(folder / name)
    return out


@pytest.mark.parametrize("command,option", CKPT_USES)
def test_bad_checkpoint_files_are_refused_by_every_command(command, option, tmp_path, tiny_artifacts, lr_image, capsys):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for bad in _fixed_bad_files(bad_dir):
        work = tmp_path / f"work-{bad.stem}"
        work.mkdir()
        result = CliRunner().invoke(app, _args(command, option, bad, work, tiny_artifacts, lr_image))
        _assert_clean_refusal(result, bad, work)
    assert "this must never run" not in capsys.readouterr().out


_pickled = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=4096).map(lambda b: ("random", b)),
    st.tuples(_pickled, st.integers(0, 5)).map(lambda t: ("pickle", pickle.dumps(t[0], protocol=t[1]))),
    st.tuples(st.sampled_from([datetime.date(2020, 1, 1), Gadget(), {1, 2}, complex(1, 2)]), st.integers(2, 5))
      .map(lambda t: ("objects", pickle.dumps({"state_dict": t[0]}, protocol=t[1]))),
    st.floats(0.0, 0.999).map(lambda f: ("truncated", need("bimacosr_tiny.pth").read_bytes()[: int(f * 400_000)])),
), option=st.sampled_from(["inspect --ckpt", "export --vq-ckpt"]))
def test_fuzzed_checkpoints_never_give_a_traceback(tmp_path, data, option):
    kind, payload = data
    bad = tmp_path / f"fuzz-{kind}.pth"
    bad.write_bytes(payload)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    for f in work.iterdir():
        f.unlink()
    command, opt = option.split()
    result = CliRunner().invoke(app, _args(command, opt, bad, work, Path("unused"), Path("unused")))
    _assert_clean_refusal(result, bad, work)
