"""Tests on a real bench: ``pytest -m hardware --bench-file bench.toml``.

Skipped unless a bench file is given. They also run against the virtual bench
(``pcm-hil emulate --bench-file bench.toml``), which is how they are checked in CI-less
development. They program the first 16 cells of the chip's last array.
"""
from __future__ import annotations

import numpy as np
import pytest

from pcm_hil.bench.chip import BenchChip
from pcm_hil.program import program_verify

pytestmark = pytest.mark.hardware


@pytest.fixture
def bench_chip(request: pytest.FixtureRequest):
    with BenchChip.from_file(request.config.getoption("--bench-file")) as chip:
        yield chip


def _test_cells(chip: BenchChip) -> np.ndarray:
    g = chip.geometry
    return g.index(g.arrays - 1, 0, np.arange(min(16, g.cols)))


def test_identity_and_reads(bench_chip) -> None:
    info = bench_chip.identity()
    assert info["board"]
    g = bench_chip.read(_test_cells(bench_chip), n_avg=8)
    assert np.all(np.isfinite(g)) and np.all(g > -1.0)


def test_soft_limits_refuse_before_sending(bench_chip) -> None:
    too_high = bench_chip.limits.max_amplitude_v * 1.01
    with pytest.raises(ValueError, match="max_amplitude_v"):
        bench_chip.pulse(_test_cells(bench_chip), "RESET", too_high, 50e-9)


def test_program_verify_on_sixteen_cells(bench_chip) -> None:
    cells = _test_cells(bench_chip)
    res = program_verify(bench_chip, cells, np.full(cells.size, 8.0))
    assert res.converged.mean() >= 0.75
    if bench_chip.smu is not None:
        g = bench_chip.read_smu(cells[res.converged][:4])
        assert np.all(np.abs(g - 8.0) < 2.0)
