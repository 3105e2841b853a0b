"""The one output rule, for every command: an output path that cannot be written is refused before any
work starts (exit 2, naming the option and the path, nothing written); existing outputs need --force; a
folder where a file is expected (and the reverse) is an error; and each command's --help states the rule."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bimaco_deploy.cli import app

from conftest import need

#: commands that write no files (everything else must appear in BAD_OUTPUT below)
WRITES_NOTHING = {"doctor"}


def _commands():
    return sorted(c.name or c.callback.__name__ for c in app.registered_commands)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An export, an LR image and a folder of them; nothing here is ever written by the tests below."""
    from bimaco_deploy.export.exporter import export

    root = tmp_path_factory.mktemp("outputs")
    export(need("config.yaml"), need("bimacosr_tiny.pth"), root / "art", with_vq=False, progress=False,
           print_report=False)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "lr.png")
    (root / "lrs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "lrs" / "a.png")
    return root


def _bad_output_cases(root):
    """(command, args, option named in the message, bad path): one bad output path per output option.
    The other inputs are valid, or fail only later: the output check must come first."""
    cfg = str(need("config.yaml"))
    ck = str(need("bimacosr_tiny.pth"))
    bad = "/proc/bimaco/x"
    return [
        ("inspect", ["--config", cfg, "--json", f"{bad}/i.json"], "--json", f"{bad}/i.json"),
        ("export", ["--config", cfg, "--ckpt", ck, "--out", f"{bad}/art"], "--out", f"{bad}/art"),
        ("check", ["--artifacts", str(root / "art"), "--ckpt", ck, "--json", f"{bad}/c.json"], "--json", f"{bad}/c.json"),
        ("check", ["--artifacts", str(root / "art"), "--ckpt", ck, "--save-inputs", f"{bad}/in"], "--save-inputs", f"{bad}/in"),
        ("check", ["--artifacts", str(root / "art"), "--ckpt", ck, "--save-outputs", f"{bad}/out"], "--save-outputs", f"{bad}/out"),
        ("infer", [str(root / "lr.png"), f"{bad}/o.png", "--config", cfg], "OUTPUT", f"{bad}/o.png"),
        ("infer", [str(root / "lrs"), f"{bad}/out", "--config", cfg], "OUTPUT", f"{bad}/out"),
        ("infer", [str(root / "lr.png"), str(root / "never.png"), "--config", cfg, "--json", f"{bad}/r.json"],
         "--json", f"{bad}/r.json"),
        ("bench", ["--config", cfg, "--json", f"{bad}/b.json"], "--json", f"{bad}/b.json"),
        ("build", ["--artifacts", str(root / "art"), "--out", f"{bad}/u.plan"], "--out", f"{bad}/u.plan"),
        ("build", ["--artifacts", str(root / "art"), "--out", str(root / "never.plan"), "--timing-cache",
                   f"{bad}/t.cache"], "--timing-cache", f"{bad}/t.cache"),
        ("triton-repo", ["--artifacts", str(root / "art"), "--backend", "onnxruntime", "--out", f"{bad}/repo"],
         "--out", f"{bad}/repo"),
        ("serve", ["--config", cfg, "--log", f"{bad}/serve.log"], "--log", f"{bad}/serve.log"),
    ]


def test_every_command_refuses_a_bad_output_path_before_working(files):
    cases = _bad_output_cases(files)
    covered = {c[0] for c in cases}
    missing = set(_commands()) - covered - WRITES_NOTHING
    assert not missing, f"commands without a bad-output-path case (add them here): {sorted(missing)}"
    before = sorted(p.name for p in files.rglob("*"))
    for command, args, option, path in cases:
        result = CliRunner().invoke(app, [command, *args])
        assert result.exit_code == 2, (command, result.output)
        assert f"{option} {path}: cannot write in folder /proc" in result.output, (command, result.output)
        assert "Traceback" not in result.output
    assert sorted(p.name for p in files.rglob("*")) == before  # nothing written anywhere


def test_every_writing_command_states_the_output_rule_in_its_help():
    for name in _commands():
        text = " ".join(CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "400"}).output.split())
        if name in WRITES_NOTHING:
            assert "Writes no files." in text, name
        else:
            assert "an existing output is replaced only with --force" in text, name
            assert "--force" in text, name


def test_existing_outputs_need_force(files, tmp_path):
    cfg = str(need("config.yaml"))
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    cases = [
        ["inspect", "--config", cfg, "--json", str(taken)],
        ["bench", "--config", cfg, "--json", str(taken)],
        ["check", "--artifacts", str(files / "art"), "--ckpt", str(need("bimacosr_tiny.pth")), "--json", str(taken)],
        ["infer", str(files / "lr.png"), str(tmp_path / "o.png"), "--config", cfg, "--json", str(taken)],
        ["export", "--config", cfg, "--random-init", "--out", str(files / "art")],
    ]
    for args in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "already exists; pass --force" in result.output, (args, result.output)
    assert taken.read_text() == "{}"
    png = tmp_path / "sr.png"
    png.write_bytes(b"old")
    result = CliRunner().invoke(app, ["infer", str(files / "lr.png"), str(png), "--config", cfg])
    assert result.exit_code == 2 and f"OUTPUT {png}: already exists; pass --force" in result.output
    assert png.read_bytes() == b"old"


def test_a_folder_input_into_a_png_name_is_refused(files, tmp_path):
    result = CliRunner().invoke(app, ["infer", str(files / "lrs"), str(tmp_path / "out.png"), "--config",
                                      str(need("config.yaml"))])
    assert result.exit_code == 2
    assert f"OUTPUT {tmp_path / 'out.png'}: a folder is written here, but the name looks like a file" in result.output
    assert not (tmp_path / "out.png").exists()


def test_json_naming_a_folder_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["inspect", "--config", "bimacosr-tiny", "--json", str(tmp_path)])
    assert result.exit_code == 2 and f"--json {tmp_path}: is a folder; give a file path" in result.output


def test_a_missing_parent_folder_is_created_and_said(tmp_path):
    out = tmp_path / "new" / "deeper" / "i.json"
    result = CliRunner().invoke(app, ["inspect", "--config", "bimacosr-tiny", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert f"folder {out.parent} does not exist; it will be created" in result.output
    assert out.is_file()
