"""The client side of `infer --server`, without a server: URLs, and options that only make
sense locally are refused instead of silently ignored."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from bimaco_deploy.cli import app
from bimaco_deploy.errors import InputError
from bimaco_deploy.serving.client import parse_url


@pytest.mark.parametrize("url,expected", [
    ("http://127.0.0.1:8000", ("http", "127.0.0.1:8000")),
    ("grpc://localhost:8001/", ("grpc", "localhost:8001")),
    ("127.0.0.1:8000", ("http", "127.0.0.1:8000")),
])
def test_server_urls_name_protocol_and_address(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["https://h:1", "http://", "http://h:1/v2/models"])
def test_unusable_server_urls_are_refused(url):
    with pytest.raises(InputError, match="--server"):
        parse_url(url)


def test_local_model_options_with_server_are_refused(tmp_path):
    src = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(src)
    result = CliRunner().invoke(app, ["infer", str(src), str(tmp_path / "b.png"), "--server", "http://127.0.0.1:9",
                                      "--backend", "torch", "--tile", "128"])
    assert result.exit_code == 2
    assert "--backend, --tile apply to local inference only" in result.output
    assert not (tmp_path / "b.png").exists()
