"""Shared fixtures: chips for the interface suite, one calibrated noise model for the whole
run, and the hardware opt-in."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pcm_hil.calibrate import CalibrationConfig, run_calibration
from pcm_hil.chip import Geometry
from pcm_hil.emulator import EmulatedChip
from pcm_hil.run_store import RunStore
from pcm_hil_noisemodel import NoiseModel

SMALL = Geometry(2, 32, 64)  # 4096 cells
STORE_GEOMETRY = Geometry(1, 128, 128)  # the chip the store and resume tests program (seed 2)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-file", default=None, help="bench TOML file: enables tests marked 'hardware'")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--bench-file"):
        return
    skip = pytest.mark.skip(reason="hardware test: give --bench-file FILE to run it on a real bench")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def sigint_handler_restored():
    """Every test leaves Ctrl-C as it found it: a job or command that installs a SIGINT
    handler (StopRequest, deferred_sigint) must restore it on every way out."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left a SIGINT handler installed: {after!r}")


@pytest.fixture
def emulated() -> EmulatedChip:
    return EmulatedChip(SMALL, profile="pcm", seed=7)


@dataclass
class Calibration:
    """The chip a calibration ran on, the fitted model, its measurement tables and the file."""

    chip: EmulatedChip
    model: NoiseModel
    data: dict[str, pd.DataFrame]
    noise_file: Path


@pytest.fixture(scope="session")
def calibration(tmp_path_factory) -> Calibration:
    """One calibration per test run, on the last 8,000 cells of the store tests' chip
    (``STORE_GEOMETRY``, seed 2); tests that program its chip use cells outside them."""
    d = tmp_path_factory.mktemp("noise")
    chip = EmulatedChip(STORE_GEOMETRY, profile="pcm", seed=2)
    with RunStore(d / "s.sqlite") as store:
        run_id, model = run_calibration(chip, store, CalibrationConfig(cells=8000, first_cell=8384, seed=2))
        data = {t: store.read(run_id, t) for t in store.tables()}
    model.save(d / "noise.json")
    return Calibration(chip, model, data, d / "noise.json")


@pytest.fixture(scope="session")
def noise_file(calibration: Calibration) -> Path:
    """The shared calibration's noise model, as a JSON file."""
    return calibration.noise_file


@pytest.fixture
def noise(noise_file: Path) -> NoiseModel:
    """The shared noise model, loaded fresh for each test."""
    return NoiseModel.load(noise_file)
