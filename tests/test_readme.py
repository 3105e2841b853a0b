"""The README's command lines use options the commands really have (one name for each, everywhere)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from bimaco_deploy.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _options():
    group = typer.main.get_command(app)
    out = {}
    for name, cmd in group.commands.items():
        opts = set()
        for p in cmd.params:
            opts |= {o for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("-")}
        out[name] = opts | {"--help"}
    return out


def test_readme_command_lines_use_existing_options():
    options = _options()
    text = README.read_text()
    # join continued lines, then look at every `bimaco-deploy COMMAND ...` line
    text = re.sub(r"\\\n\s*", " ", text)
    bad = []
    for m in re.finditer(r"bimaco-deploy (\w+)([^\n`|]*)", text):
        cmd, rest = m.group(1), m.group(2)
        if cmd not in options:
            continue
        for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            if opt not in options[cmd]:
                bad.append(f"{cmd} {opt}")
    assert not bad, f"README uses options the commands do not have: {sorted(set(bad))}"
    assert "--plugin-lib" not in README.read_text()

