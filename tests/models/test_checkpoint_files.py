"""What a file given as a checkpoint really is: every bad file is named and described, read from its
bytes without unpickling, and no message ever suggests turning safe loading (weights_only) off."""

from __future__ import annotations

import datetime
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from bimaco_deploy.errors import CheckpointError
from bimaco_deploy.models.checkpoint import describe_file_problem, pickle_globals, read_state_dict

from conftest import need


class Gadget:
    """An arbitrary class: a checkpoint pickling it must be refused, naming it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def _bad_files(tmp_path):
    real = need("bimacosr_tiny.pth").read_bytes()
    files = {
        "empty": (b"", "empty file (0 bytes)"),
        "text": (b"hello world\n", "a text file (starts with 'hello world')"),
        "json": (json.dumps({"state_dict": {"a": 1}}).encode(), "a JSON or other text file"),
        "random": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "unrecognised binary"),
        "truncated": (real[: len(real) // 3], "truncated or corrupt"),
        "head": (real[:100], "truncated or corrupt"),
        "plain_pickle": (pickle.dumps({"a": 1}), "plain Python pickle without tensors"),
        "object_pickle": (pickle.dumps({"w": datetime.date(2020, 1, 1)}), "objects of class datetime.date"),
        "gadget_pickle": (pickle.dumps(Gadget()), "objects of class builtins.print"),
        "gzip": (b"\x1f\x8b\x08\x00" + b"\0" * 20, "gzip"),
    }
    out = {}
    for name, (data, expected) in files.items():
        p = tmp_path / f"{name}.pth"
        p.write_bytes(data)
        out[name] = (p, expected)
    png = tmp_path / "image.pth"
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    out["png"] = (png, "a PNG image")
    zobj = tmp_path / "zip_objects.pth"
    torch.save({"w": datetime.date(2020, 1, 1)}, zobj)
    out["torch_zip_objects"] = (zobj, "objects of class datetime.date")
    zother = tmp_path / "other.zip"
    with zipfile.ZipFile(zother, "w") as z:
        z.writestr("notes.txt", "hi")
    out["zip_other"] = (zother, "zip archive without data.pkl")
    return out


@pytest.mark.parametrize("case", ["empty", "text", "json", "random", "truncated", "head", "plain_pickle",
                                  "object_pickle", "gadget_pickle", "gzip", "png", "torch_zip_objects", "zip_other"])
def test_each_bad_file_is_named_and_described(case, tmp_path, capsys):
    path, expected = _bad_files(tmp_path)[case]
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and expected in msg, msg
    assert "weights_only" not in msg and "Re-running" not in msg and "\n" not in msg
    assert "this must never run" not in capsys.readouterr().out


def test_a_real_checkpoint_has_no_problem():
    assert describe_file_problem(need("bimacosr_tiny.pth")) is None
    assert len(read_state_dict(need("bimacosr_tiny.pth"))) > 100


def test_torch_legacy_format_still_loads(tmp_path):
    p = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    assert describe_file_problem(p) is None
    assert torch.equal(read_state_dict(p)["a"], torch.ones(2))


def test_pickle_globals_are_read_without_running_the_pickle(capsys):
    data = pickle.dumps([Gadget(), datetime.datetime(2020, 1, 1)], protocol=4)
    assert pickle_globals(data) == ["builtins.print", "datetime.datetime"]
    assert pickle_globals(pickle.dumps(Gadget(), protocol=2)) == ["builtins.print"]
    assert "this must never run" not in capsys.readouterr().out
    with pytest.raises(ValueError):
        pickle_globals(data[:10])
