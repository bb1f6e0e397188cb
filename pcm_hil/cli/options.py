"""Options the commands share, declared once, and argument types that check ranges while
parsing (so a bad value is an argparse error naming the option and the accepted range)."""
from __future__ import annotations

import argparse
import math
from typing import Callable, NoReturn

from ..app import chip_arguments as chip_options  # noqa: F401 (declared once, shared with lab scripts)


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argument type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, lo_open: bool = False, shown: str | None = None) -> Callable[[str], float]:
    """An argument type: a finite number in [lo, hi] (or (lo, hi] with ``lo_open``); ``shown``
    says the range in words where numbers would not (e.g. "[0, 10 years] in s")."""
    shown = shown or f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {text!r}") from None
        if not (math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi):
            raise argparse.ArgumentTypeError(f"must be in {shown}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


SEED = int_in(0, 2**63 - 1)
SECONDS_UP_TO_10_YEARS = float_in(0, 10 * 365 * 86400.0, shown="[0, 10 years] in s")


class Parser(argparse.ArgumentParser):
    """An argument parser whose refusal is one line naming the option and the accepted range."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def json_option() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return p


def run_dir_option() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--run-dir", default="runs", help="run store directory (default ./runs)")
    return p


def seed_option(help_text: str = "seed (default 0)") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=SEED, default=0, help=help_text)
    return p
