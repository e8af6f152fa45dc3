"""Shared fixtures: writable copies of the hand-written dataset trees in tests/fixtures/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def veri_root(tmp_path: Path) -> Path:
    """A copy of the hand-written VeRi-776 tree (gb2312 XML, typeID 0 bug, CRLF files)."""
    return Path(shutil.copytree(FIXTURES / "veri", tmp_path / "VeRi"))


@pytest.fixture
def vehicleid_root(tmp_path: Path) -> Path:
    """A copy of the hand-written VehicleID tree (sparse attributes, CRLF colour names)."""
    return Path(shutil.copytree(FIXTURES / "vehicleid", tmp_path / "VehicleID_V1.0"))
