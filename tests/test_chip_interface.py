"""The chip interface contract, run against every backend the ``chip`` fixture offers."""
from __future__ import annotations

import numpy as np
import pytest

from pcm_hil.chip import Geometry, PulseKind, SoftLimits
from pcm_hil.bench.chip import BenchChip
from pcm_hil.emulator import EmulatedChip
from pcm_hil.emulator.instruments import VirtualBench

from .conftest import SMALL


@pytest.fixture(params=["emulated", "bench"])
def backend(request: pytest.FixtureRequest):
    """(chip, truth): the chip under test and the emulated chip that is the ground truth."""
    if request.param == "emulated":
        c = EmulatedChip(SMALL, profile="pcm", seed=11)
        yield c, c
        c.close()
        return
    with VirtualBench(SMALL, profile="pcm", seed=11) as vb:
        with BenchChip(vb.bench_config()) as c:
            yield c, vb.chip


@pytest.fixture
def chip(backend):
    return backend[0]



def test_geometry_index_round_trip() -> None:
    g = Geometry(3, 5, 7)
    a, r, c = np.meshgrid(range(3), range(5), range(7), indexing="ij")
    idx = g.index(a.ravel(), r.ravel(), c.ravel())
    assert np.array_equal(idx, np.arange(g.n_cells))
    back = g.coords(idx)
    assert np.array_equal(back[0], a.ravel()) and np.array_equal(back[2], c.ravel())
    with pytest.raises(ValueError, match="row coordinates"):
        g.index(0, 5, 0)
    with pytest.raises(ValueError, match="geometry.rows"):
        Geometry(1, 0, 4)


def test_pulse_and_read_change_conductance(chip) -> None:
    cells = np.arange(0, 200)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    low = chip.read(cells, n_avg=8)
    for _ in range(6):
        chip.pulse(cells, PulseKind.SET, 1.0, 100e-9)
    high = chip.read(cells, n_avg=8)
    assert low.shape == high.shape == (200,)
    assert np.median(low) < 1.0 < 5.0 < np.median(high)


def test_time_advances_and_wait(chip) -> None:
    t0 = chip.now()
    chip.wait(3600.0)
    assert chip.now() - t0 >= 3600.0
    with pytest.raises(ValueError, match="seconds"):
        chip.wait(-1)
    with pytest.raises(ValueError, match="seconds"):
        chip.wait(float("nan"))


BAD_PULSES = [
    (dict(cells=[0, 1], amplitude_v=[1.0, float("nan")], width_s=1e-7), "finite"),
    (dict(cells=[0, 1], amplitude_v=1.0, width_s=float("inf")), "finite"),
    (dict(cells=[0, 1], amplitude_v=1.0, width_s=-1e-7), "width_s must be > 0"),
    (dict(cells=[0, SMALL.n_cells], amplitude_v=1.0, width_s=1e-7), r"accepted \[0, 4095\]"),
    (dict(cells=[-1, 2], amplitude_v=1.0, width_s=1e-7), "out of range"),
    (dict(cells=[0, 1, 2], amplitude_v=[1.0, 1.0], width_s=1e-7), "one value per cell"),
    (dict(cells=[3, 3], amplitude_v=1.0, width_s=1e-7), "must not repeat"),
    (dict(cells=[0.5, 1.0], amplitude_v=1.0, width_s=1e-7), "integer"),
    (dict(cells=[[0, 1]], amplitude_v=1.0, width_s=1e-7), "1-D"),
    (dict(cells=[0, 1], amplitude_v=-1.0, width_s=1e-7), "amplitude_v must be >= 0"),
    (dict(cells=[0, 1], amplitude_v=5.0, width_s=1e-7), "max_amplitude_v"),
    (dict(cells=[0, 1], amplitude_v=1.0, width_s=1e-3), "max_width_s"),
    (dict(cells=[0, 1], amplitude_v=2.9, width_s=9e-6), "max_energy_j"),
]


@pytest.mark.parametrize("kwargs,match", BAD_PULSES)
def test_bad_pulse_is_refused_and_changes_nothing(backend, kwargs, match) -> None:
    chip, truth = backend
    cells = np.arange(16)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    before = truth.true_conductance(cells)
    t0 = truth.now()
    with pytest.raises(ValueError, match=match):
        chip.pulse(kwargs["cells"], "SET", kwargs["amplitude_v"], kwargs["width_s"])
    assert truth.now() == t0
    assert np.array_equal(truth.true_conductance(cells), before)


def test_unknown_pulse_kind(chip) -> None:
    with pytest.raises(ValueError, match="'SET' or 'RESET'"):
        chip.pulse([0], "ERASE", 1.0, 1e-7)


def test_bad_read_is_refused(chip) -> None:
    with pytest.raises(ValueError, match="n_avg"):
        chip.read([0], n_avg=0)
    with pytest.raises(ValueError, match="out of range"):
        chip.read([SMALL.n_cells])


def test_soft_limits_validate_themselves() -> None:
    with pytest.raises(ValueError, match="max_amplitude_v"):
        SoftLimits(max_amplitude_v=float("inf"))
    with pytest.raises(ValueError, match="max_width_s"):
        SoftLimits(max_width_s=0)


def test_empty_batches_are_no_ops(backend) -> None:
    chip, truth = backend
    t0 = truth.now()
    chip.pulse(np.array([], dtype=np.int64), "SET", 1.0, 1e-7)
    assert chip.read(np.array([], dtype=np.int64)).size == 0
    assert truth.now() == t0


def test_reads_follow_the_truth(backend) -> None:
    chip, truth = backend
    cells = np.arange(100, 400)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    chip.pulse(cells, "SET", np.linspace(0.6, 1.4, cells.size), 100e-9)
    g_true = truth.true_conductance(cells)
    g = chip.read(cells, n_avg=64)
    # white noise averaged over 64 reads, plus the 1/f term a few µs after programming
    # (relative σ = Q_s(x)·sqrt(ln(age/2t_read)), ln term < 3 here)
    p = truth.profile
    q = np.minimum(p.q_s_coeff / np.maximum((g_true / p.g_max_us) ** p.q_s_exp, 1e-3), p.q_s_max)
    sigma = np.hypot(p.read_sigma(g_true) / 8, q * np.sqrt(3.0) * g_true)
    assert np.all(np.abs(g - g_true) < 5 * sigma)


def test_program_verify_runs_unchanged(backend) -> None:
    from pcm_hil.program import program_verify

    chip, truth = backend
    cells = np.arange(512)
    res = program_verify(chip, cells, np.full(512, 10.0), tolerance_us=0.5)
    assert res.converged.mean() > 0.9
    ok = res.converged
    assert np.all(np.abs(truth.true_conductance(cells[ok]) - 10.0) < 0.5 + 5 * 0.43 / np.sqrt(8))
