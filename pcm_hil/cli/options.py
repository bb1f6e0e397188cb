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


def auto_or(parse: Callable[[str], float]) -> Callable[[str], float | str]:
    """An argument type: the word ``auto``, or what ``parse`` accepts."""
    def parse_auto(text: str) -> float | str:
        if text.strip().lower() == "auto":
            return "auto"
        try:
            return parse(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (or 'auto')") from None

    parse_auto.__name__ = "auto or number"
    return parse_auto


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


def nm_list(text: str) -> tuple[tuple[int, int], ...]:
    """An argument type: comma-separated N:M patterns (``2:4,1:4``), integers 1 <= N < M <= 16."""
    out = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        try:
            n, m = (int(v) for v in word.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected N:M patterns such as 2:4,1:4, got {text!r}") from None
        if not 1 <= n < m <= 16:
            raise argparse.ArgumentTypeError(f"N:M needs integers 1 <= N < M <= 16, got {word!r}")
        out.append((n, m))
    if not out:
        raise argparse.ArgumentTypeError(f"expected N:M patterns such as 2:4,1:4, got {text!r}")
    return tuple(sorted(set(out)))


def float_list(lo: float, hi: float) -> Callable[[str], tuple[float, ...]]:
    """An argument type: comma-separated numbers, each in [lo, hi], at least one."""
    one = float_in(lo, hi)

    def parse(text: str) -> tuple[float, ...]:
        words = [w for w in text.split(",") if w.strip()]
        if not words:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [{lo:g}, {hi:g}], got {text!r}")
        return tuple(sorted(set(one(w.strip()) for w in words)))

    parse.__name__ = "list of numbers"
    return parse


def choice_list(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argument type: comma-separated names among ``choices``, at least one."""

    def parse(text: str) -> tuple[str, ...]:
        words = [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in words if w not in choices]
        if not words or bad:
            raise argparse.ArgumentTypeError(f"expected comma-separated names among {', '.join(choices)}, got {text!r}")
        return tuple(dict.fromkeys(words))

    parse.__name__ = "list of names"
    return parse


def budget_list(text: str) -> tuple[float | None, ...]:
    """An argument type: comma-separated tolerances in (0, 10] µS, or ``default``."""
    one = float_in(0, 10, lo_open=True, shown="(0, 10] µS or 'default'")
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise argparse.ArgumentTypeError(f"expected comma-separated tolerances in (0, 10] µS or 'default', "
                                         f"got {text!r}")
    return tuple(dict.fromkeys(None if w == "default" else one(w) for w in words))


budget_list.__name__ = "list of tolerances"

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
