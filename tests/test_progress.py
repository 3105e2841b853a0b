"""Progress: plain lines with counts and ETA when not on a terminal, nothing when quiet, and how far
the work got after Ctrl-C."""

from __future__ import annotations

import io

import pytest

from bimaco_deploy import progress as P


def test_plain_lines_show_count_eta_and_what_finished():
    out = io.StringIO()
    prog = P.Progress("plain", stream=out, interval=0.0)
    with prog.task("super-resolving", total=3, unit="images") as task:
        for name in ("a.png", "b.png", "c.png"):
            task.advance(note=name)
    lines = out.getvalue().splitlines()
    assert lines[0] == "super-resolving (3 images) ..."
    assert lines[1].startswith("super-resolving: 1/3 images") and "ETA" in lines[1] and "(a.png)" in lines[1]
    assert lines[-1].startswith("super-resolving: 3/3 images") and "ETA" not in lines[-1]


def test_plain_lines_are_throttled_but_first_and_last_always_show():
    out = io.StringIO()
    prog = P.Progress("plain", stream=out, interval=3600.0)
    with prog.task("layers", total=100, unit="layers") as task:
        for _ in range(100):
            task.advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "1/100" in lines[1] and "100/100" in lines[2]


def test_auto_is_plain_when_the_stream_is_not_a_terminal():
    assert P.Progress("auto", stream=io.StringIO()).mode == "plain"


def test_quiet_prints_nothing_but_still_tracks_work():
    P.reset()
    out = io.StringIO()
    prog = P.Progress("quiet", stream=out)
    with pytest.raises(KeyboardInterrupt):
        with prog.task("super-resolving", total=10, unit="images") as task:
            task.advance()
            task.advance()
            with prog.task("tiles of big.png", total=16, unit="tiles") as tiles:
                tiles.advance()
                raise KeyboardInterrupt
    assert out.getvalue() == ""
    assert P.interrupted_summary() == ("super-resolving: 2 of 10 images done; tiles of big.png: 1 of 16 tiles done")
