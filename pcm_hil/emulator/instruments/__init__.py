"""Emulated bench instruments, served on loopback by :class:`VirtualBench`.

All three share one :class:`BenchModel` (the emulated chip plus the board's switch
matrix), so a cell routed to the SMU or pulse generator by the board is the cell they
measure or pulse.
"""
from .bench_model import BenchModel
from .virtual_bench import VirtualBench

__all__ = ["BenchModel", "VirtualBench"]
