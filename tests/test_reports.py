"""The one output rule (reports.check_output) and atomic writes with the user's permissions."""

from __future__ import annotations

import os
import stat

import pytest

from bimaco_deploy.errors import OutputError
from bimaco_deploy.reports import atomic_output, check_output, make_temp_dir, write_json_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_an_unwritable_place_is_refused_naming_option_and_path():
    with pytest.raises(OutputError, match=r"--json /proc/x/r\.json: cannot write in folder /proc"):
        check_output("/proc/x/r.json", option="--json")


def test_a_folder_where_a_file_is_expected_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"--json .*: is a folder; give a file path"):
        check_output(tmp_path, option="--json")


def test_an_existing_output_needs_force(tmp_path):
    f = tmp_path / "r.json"
    f.write_text("{}")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        check_output(f, option="--json")
    assert check_output(f, option="--json", force=True).exists
    folder = tmp_path / "art"
    folder.mkdir()
    with pytest.raises(OutputError, match="folder already exists; pass --force"):
        check_output(folder, option="--out", kind="dir")
    assert check_output(folder, option="--out", kind="dir", existing_dir="merge").exists


def test_a_folder_output_named_like_a_file_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"OUTPUT .*out\.png: a folder is written here, but the name looks like a file"):
        check_output(tmp_path / "out.png", option="OUTPUT", kind="dir")


def test_missing_parents_are_reported_not_created(tmp_path):
    target = tmp_path / "a" / "b" / "r.json"
    chk = check_output(target, option="--json")
    assert chk.missing_parents == [tmp_path / "a", tmp_path / "a" / "b"]
    assert "folder" in chk.note() and str(tmp_path / "a" / "b") in chk.note()
    assert not (tmp_path / "a").exists()  # nothing is created by a check
    assert list(tmp_path.iterdir()) == []  # and the writability probe left nothing behind


def test_a_file_in_the_way_of_a_parent_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(tmp_path / "f" / "r.json", option="--json")


def test_wrong_suffix_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"ending in \.png"):
        check_output(tmp_path / "x.jpg", option="OUTPUT", suffixes=(".png",))


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_files_and_temp_dirs_get_the_umask_permissions(tmp_path, mask):
    old = os.umask(mask)
    try:
        with atomic_output(tmp_path / "sub" / "x.bin") as f:
            f.write(b"data")
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        d = make_temp_dir(tmp_path, prefix="t-")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "sub" / "x.bin") == 0o666 & ~mask
    assert _mode(tmp_path / "r.json") == 0o666 & ~mask
    assert _mode(d) == 0o777 & ~mask


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "x.bin") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
