"""`bimaco-deploy inspect` reports the published model's structure and sizes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bimaco_deploy.cli import app


def test_inspect_published_config_counts_layers_and_float_params(tmp_path):
    out = tmp_path / "inspect.json"
    result = CliRunner().invoke(app, ["inspect", "--config", "bimacosr", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["binary_layers"] == 178
    assert report["binary_conv_layers"] == 118
    assert report["binary_linear_layers"] == 60
    assert report["float_model_params"] == 118_593_583
    counts = report["counts"]
    # figures from the spec's appendix (published model after replacement)
    assert counts["bmb_weights"] == 118_421_504
    assert counts["full_precision"] == 93_167
    assert counts["rprelu_bias"] == 78_912 + 140_544
    # SMB/LRMB of the three strided layers are dead (average-pool shortcut)
    assert counts["smb_values"] == 202_880 - 2 * (160 + 320 + 320)
    assert counts["lrmb"] == 1_241_856 - 8 * 2 * (160 + 320 + 320)
    assert report["compression_fp16_side"] > 24
    assert "178" in result.output and "118,593,583" in result.output


def test_inspect_with_checkpoint_counts_exact_zero_weights(tiny_dir, tmp_path):
    out = tmp_path / "i.json"
    result = CliRunner().invoke(
        app,
        ["inspect", "--config", str(tiny_dir / "config.yaml"), "--ckpt", str(tiny_dir / "bimacosr_tiny.pth"),
         "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["binary_layers"] == report["binary_conv_layers"] + report["binary_linear_layers"] == 177
    assert report["exact_zero_latent_weights"] == 0


def test_inspect_bad_checkpoint_fails_and_writes_nothing(tiny_dir, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "i.json"
    result = CliRunner().invoke(
        app, ["inspect", "--config", str(tiny_dir / "config.yaml"), "--ckpt", str(bad), "--json", str(out)]
    )
    assert result.exit_code != 0
    assert "bad.pth" in result.output
    assert not out.exists()
