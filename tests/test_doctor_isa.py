"""doctor names the instruction set the packed CPU kernels use."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bimaco_deploy.cli import app
from bimaco_deploy.doctor import doctor, render_doctor
from bimaco_deploy.plugins import torch_ops


def test_doctor_names_the_kernel_isa_in_use():
    facts = doctor()["native_ops"]
    if not torch_ops.ops_available():
        assert facts["cpu_isa"] is None and facts["isa_note"]
        pytest.skip("native CPU kernels not built")
    assert facts["cpu_isa"] == torch_ops.cpu_isa() and facts["cpu_isas"] == list(torch_ops.cpu_available_isas())
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_doctor(doctor()))
    assert f"in use: {facts['cpu_isa']}" in console.export_text()


def test_doctor_json_includes_the_isa():
    import json

    out = CliRunner().invoke(app, ["doctor", "--json"]).output
    assert "cpu_isa" in json.loads(out)["native_ops"]
