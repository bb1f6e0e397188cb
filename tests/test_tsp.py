"""The Lua subset behind the emulated 2636B, and TSP as users send it (protocol pairs)."""
from __future__ import annotations

import struct

import pytest

from pcm_hil.chip import Geometry
from pcm_hil.emulator.instruments.bench_model import BenchModel
from pcm_hil.emulator.instruments.keithley2600 import Keithley2600Emulator
from pcm_hil.emulator.instruments.tsp import Interpreter, LuaError, Table, standard_library


def run(src: str) -> list[str]:
    out: list[str] = []
    g = Table(standard_library(out.append, lambda: 6))
    Interpreter(g).run(src)
    return out


@pytest.mark.parametrize("src, expected", [
    ("print(1 + 2 * 3 ^ 2)", "1.90000e+01"),
    ("print(2 ^ 3 ^ 2)", "5.12000e+02"),  # right associative
    ("print('a' .. 'b' .. 1)", "ab1.00000e+00"),
    ("print(nil or false, 1 and 2, not 0)", "false\t2.00000e+00\tfalse"),
    ("local t = {10, 20, x = 3} print(#t, t[2], t.x)", "2.00000e+00\t2.00000e+01\t3.00000e+00"),
    ("local function f(n) if n < 2 then return n end return f(n-1) + f(n-2) end print(f(10))", "5.50000e+01"),
    ("s = 0 for i = 10, 1, -3 do s = s + i end print(s)", "2.20000e+01"),
    ("s = 0 for _, v in ipairs({1, 2, 3}) do s = s + v end print(s)", "6.00000e+00"),
    ("i = 0 while true do i = i + 1 if i == 4 then break end end print(i)", "4.00000e+00"),
    ("i = 0 repeat i = i + 2 until i > 5 print(i)", "6.00000e+00"),
    ("function mk() local c = 0 return function() c = c + 1 return c end end f = mk() f() print(f())",
     "2.00000e+00"),
    ("a, b = 1, 2 a, b = b, a print(a, b)", "2.00000e+00\t1.00000e+00"),
    ("print(string.format('%d:%s', 7, 'x'))", "7:x"),
])
def test_lua_subset(src: str, expected: str) -> None:
    assert run(src) == [expected]


@pytest.mark.parametrize("src, code", [("x = = 1", -285), ("for i = 1 do end", -285), ("nosuch.x = 1", -286),
                                       ("nosuch()", -286), ("print(1 < 'a')", -286), ("while true do end", -286)])
def test_lua_errors(src: str, code: int) -> None:
    with pytest.raises(LuaError) as e:
        run(src)
    assert e.value.code == code


@pytest.fixture
def smu() -> Keithley2600Emulator:
    return Keithley2600Emulator(BenchModel.create(Geometry(1, 4, 4), seed=0))


def test_defaults_readable_after_power_on_and_reset(smu) -> None:
    names = ["localnode.model", "localnode.linefreq", "smua.sense", "smua.source.rangev", "smua.source.rangei",
             "smua.source.autorangev", "smua.measure.rangei", "smua.measure.autorangev", "smua.source.limitv",
             "status.measurement.instrument.smua.condition", "format.data", "display.screen"]
    for _ in range(2):
        reply = smu.handle("print(" + ", ".join(names) + ")")
        assert reply is not None and len(reply.split("\t")) == len(names) and "nil" not in reply
        assert smu.handle("print(errorqueue.count)") == "0.00000e+00"
        smu.handle("smua.source.rangev = 20 smua.measure.autorangei = 0 reset()")
    assert smu.handle("print(smua.source.rangev, smua.measure.autorangei)") == "2.00000e-01\t1.00000e+00"


def test_range_write_turns_autorange_off_and_rounds_up(smu) -> None:
    smu.handle("smua.source.rangev = 3")
    assert smu.handle("print(smua.source.rangev, smua.source.autorangev)") == "2.00000e+01\t0.00000e+00"
    smu.handle("smua.source.rangev = 300")
    assert smu.handle("print(errorqueue.next())").startswith("-2.22000e+02")


def test_script_buffer_and_binary_printbuffer(smu) -> None:
    for line in ["loadscript sweep", "smua.nvbuffer1.clear()", "smua.nvbuffer1.appendmode = 1",
                 "smua.source.output = 1", "for k = 1, 4 do", "  smua.source.levelv = k / 10",
                 "  smua.measure.v(smua.nvbuffer1)", "end", "endscript"]:
        assert smu.handle(line) is None
    assert smu.channels["a"].output == 0  # loaded, not run
    smu.handle("sweep.run()")
    assert smu.handle("print(smua.nvbuffer1.n)") == "4.00000e+00"
    assert smu.handle("printbuffer(1, 2, smua.nvbuffer1)") == "1.00000e-01, 2.00000e-01"
    smu.handle("format.data = format.REAL32 format.byteorder = format.BIGENDIAN")
    raw = smu.handle("printbuffer(1, 4, smua.nvbuffer1.readings)").encode("latin-1")
    assert raw[:2] == b"#0" and struct.unpack(">4f", raw[2:]) == pytest.approx((0.1, 0.2, 0.3, 0.4))
    smu.handle("format.data = format.REAL64 format.byteorder = format.LITTLEENDIAN")
    raw = smu.handle("printbuffer(4, 4, smua.nvbuffer1)").encode("latin-1")
    assert struct.unpack("<d", raw[2:]) == pytest.approx((0.4,))


def test_compliance_condition_bits(smu) -> None:
    smu.model.selected, smu.model.route = (0, 0, 0), "SMU"
    smu.handle("smua.source.limiti = 1e-8 smua.source.levelv = 2 smua.source.output = 1")
    i, cond = smu.handle("print(smua.measure.i(), status.measurement.instrument.smua.condition)").split("\t")
    assert abs(float(i)) == pytest.approx(1e-8) and float(cond) == 2
    smu.handle("smua.source.func = smua.OUTPUT_DCAMPS smua.source.leveli = 1 smua.source.limitv = 1")
    _, cond = smu.handle("print(smua.measure.v(), status.measurement.instrument.smua.condition)").split("\t")
    assert float(cond) == 1
