"""Shared test fixtures: where the reference fixtures live, and the tiny models loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("BIMACO_FIXTURES", REPO.parent / "shared" / "fixtures"))
TINY = FIXTURES / "bimacosr-tiny"


def require(path: Path) -> Path:
    """The path, or skip the test with the reason when the shared fixtures are absent."""
    if not path.exists():
        pytest.skip(f"fixture {path} not found (set BIMACO_FIXTURES to the shared fixtures folder)")
    return path


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The bimacosr-tiny fixture folder (config, checkpoints, expected outputs)."""
    return require(TINY)


@pytest.fixture(scope="session")
def tiny_unet(tiny_dir: Path):
    """The tiny fixture UNet loaded through the public loader (shared, do not modify)."""
    from bimaco_deploy.models import load_unet

    return load_unet(tiny_dir / "config.yaml", tiny_dir / "bimacosr_tiny.pth")


def need(name: str) -> Path:
    """A file of the bimacosr-tiny fixture, or skip the test with the reason."""
    return require(TINY / name)
