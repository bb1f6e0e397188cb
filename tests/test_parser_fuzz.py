"""Property tests: the protocol parsers take any bytes without crashing or hanging."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pcm_hil_drivers import board_protocol as bp
from pcm_hil_drivers.errors import ProtocolError
from pcm_hil.chip import Geometry
from pcm_hil.emulator.instruments.bench_model import BenchModel
from pcm_hil.emulator.instruments.board import BoardEmulator
from pcm_hil.emulator.instruments.keithley2600 import Keithley2600Emulator
from pcm_hil.emulator.instruments.keysight33500b import Keysight33500BEmulator

MODEL = BenchModel.create(Geometry(1, 4, 4), seed=0)
BOARD, SMU, PG = BoardEmulator(MODEL), Keithley2600Emulator(MODEL), Keysight33500BEmulator(MODEL)
HEADERS = [b"BULK:PULS SET,", b"BULK:MEAS:G? 1,", b"CELL ", b"PULS ", b"#", b"OUTP ", b"MEAS:G? "]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_frame_decoder_raises_only_protocol_errors(data: bytes) -> None:
    try:
        bp.decode_frame(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(HEADERS), st.binary(max_size=120))
def test_board_emulator_answers_any_payload(head: bytes, tail: bytes) -> None:
    reply = BOARD.handle(head + tail)
    assert isinstance(reply, bytes) and reply


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_smu_emulator_never_crashes(line: str) -> None:
    reply = SMU.handle(line)
    assert reply is None or isinstance(reply, str)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="SOURFNCPLWIDTHVOGE:;?*1 2.e-", max_size=60))
def test_pg_emulator_never_crashes(line: str) -> None:
    reply = PG.handle(line)
    assert reply is None or isinstance(reply, str)
