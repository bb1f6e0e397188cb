"""Every injected fault kind is detected as a typed error, recovered within a bounded
policy, and leaves no cell silently wrong; giving up leaves the outputs off."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from pcm_hil_drivers.errors import ConnectionLost, InstrumentError, InstrumentTimeout, ProtocolError
from pcm_hil_drivers.pcm_board import PCMBoard
from pcm_hil.benchmarks import faults as soak
from pcm_hil.bench.chip import BenchChip, GaveUp, RetryPolicy
from pcm_hil.chip import Geometry
from pcm_hil.emulator.instruments import VirtualBench
from pcm_hil.emulator.instruments.faults import TRANSIENT_CODE, FaultPlan
from pcm_hil.program import VerifyConfig, program_verify

GEOM = Geometry(1, 32, 32)
TIMEOUT_S = 0.2

# what the driver raises for one transaction that meets each fault
TYPED = {
    "drop": (ConnectionLost, InstrumentTimeout),  # closed mid-transaction: EOF, or a reset seen as a timeout
    "delay": (InstrumentTimeout,),
    "corrupt": (ProtocolError,),
    "truncate": (InstrumentTimeout, ProtocolError),
    "error": (InstrumentError,),
    "silent": (InstrumentTimeout,),
}


@pytest.mark.parametrize("kind", sorted(TYPED))
def test_each_wire_fault_is_a_typed_driver_error(kind: str) -> None:
    plan = FaultPlan(rate=1.0, kinds=(kind,), delay_s=3 * TIMEOUT_S, silent_s=3 * TIMEOUT_S)
    with VirtualBench(GEOM, seed=1, faults=plan, frame_timeout_s=1.0) as vb:
        board = PCMBoard.from_resource(vb.addresses["board"], timeout_s=TIMEOUT_S)
        try:
            with pytest.raises(TYPED[kind]) as info:
                board.bulk_measure_g(np.arange(16), 1)
        finally:
            board.transport.close()
        if kind == "error":
            assert info.value.code == TRANSIENT_CODE
        assert vb.faults.counts[kind] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["drop", "delay", "corrupt", "truncate", "error", "silent", "stuck"])
def test_program_verify_survives_each_fault_kind(kind: str) -> None:
    """At a 5 % rate of one kind, every cell reported verified really is in its window, and
    only the stuck-burst kind costs yield (the cells it hits cannot be programmed)."""
    n = GEOM.n_cells
    targets = np.random.default_rng(4).uniform(2.0, 18.0, n)
    vcfg = VerifyConfig(tolerance_us=0.5, max_pulses=20)
    plan = FaultPlan(rate=0.05, kinds=(kind,), seed=2, delay_s=2 * TIMEOUT_S, silent_s=2 * TIMEOUT_S, stuck_burst=4)
    with VirtualBench(GEOM, seed=1, faults=plan, frame_timeout_s=1.0) as vb:
        cfg = vb.bench_config()
        cfg = replace(cfg, board=replace(cfg.board, timeout_s=TIMEOUT_S, max_batch=128))
        with BenchChip(cfg, retry=RetryPolicy(attempts=6)) as chip:
            res = program_verify(chip, np.arange(n), targets, vcfg)
            log = list(chip.fault_log)
        final = vb.chip.read(np.arange(n), n_avg=64)  # what the cells hold now, as any read sees it
        stuck = vb.chip.stuck_kind(np.arange(n)) != 0
        bound = soak._divergence_bound(1, targets, vcfg, vb.chip.now())
    assert vb.faults.counts[kind] >= 1
    if kind == "stuck":
        assert not log  # physical: invisible on the wire, flagged by verify instead
        assert res.converged[stuck].mean() < 0.5
    else:
        assert len(log) >= vb.faults.counts[kind]  # every wire fault shows up in the log (with reconnects)
    ok = res.converged & ~stuck
    # a verified cell is within its window up to 5σ of the read noise of the two reads
    assert np.all(np.abs(final[ok] - targets[ok]) <= bound[ok])
    assert res.converged[~stuck].mean() > 0.85


def test_giving_up_is_bounded_and_leaves_outputs_off() -> None:
    plan = FaultPlan(rate=0.0)
    with VirtualBench(GEOM, seed=1, faults=plan, frame_timeout_s=1.0) as vb:
        cfg = vb.bench_config()
        cfg = replace(cfg, board=replace(cfg.board, timeout_s=TIMEOUT_S))
        chip = BenchChip(cfg, retry=RetryPolicy(attempts=3, backoff_s=0.01))
        assert vb.board.output
        vb.faults.plan = FaultPlan(rate=1.0, kinds=("silent",), silent_s=0.5)  # the board stops answering
        t0 = time.monotonic()
        with pytest.raises(GaveUp, match="gave up|did not come back"):
            with chip:
                chip.read(np.arange(8))
        # attempts × (timeout + reconnect timeouts), never an endless loop
        assert time.monotonic() - t0 < 3 * 4 * (TIMEOUT_S + 0.5) + 5
        deadline = time.monotonic() + 5
        while vb.board.output and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not vb.board.output  # every host connection is gone: the board's interlock opened
        assert vb.smu.channels["a"].output == 0 and not any(c.output for c in vb.pg.ch.values())


@pytest.mark.slow
def test_fault_soak_figures() -> None:
    r = soak.run(rate=0.02, seed=3, cells=1024, batch=16, crashes=2)
    assert r["transactions"] > 1000 and r["faults_injected"] >= 10
    assert r["runs_resumed"] == 2
    assert r["measurements_lost"] == 0 and r["cells_diverged"] == 0
    assert r["faults_detected"] >= r["faults_injected"] - r["faults_by_kind"]["stuck"]
    assert r["yield_excluding_stuck"] > r["yield_uninterrupted"] - 0.03
