"""Shared fixtures: chips for the interface suite, and the hardware opt-in."""
from __future__ import annotations

import pytest

from pcm_hil.chip import Geometry
from pcm_hil.emulator import EmulatedChip

SMALL = Geometry(2, 32, 64)  # 4096 cells


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-file", default=None, help="bench TOML file: enables tests marked 'hardware'")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--bench-file"):
        return
    skip = pytest.mark.skip(reason="hardware test: give --bench-file FILE to run it on a real bench")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def emulated() -> EmulatedChip:
    return EmulatedChip(SMALL, seed=7)
