"""Markdown tables of what the emulated instruments implement, generated from their code.

``python -m pcm_hil.emulator.instruments.tables`` prints the section that
``docs/protocol.md`` carries between the ``<!-- tables:begin -->`` and
``<!-- tables:end -->`` markers; a test keeps the two identical.
"""
from __future__ import annotations

from .keithley2600 import command_table as smu_table
from .keysight33500b import command_table as pg_table

BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"


def _md(rows: list[tuple[str, str, str]], head: tuple[str, str, str]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(head) + " |", "|---|---|---|"]
    lines += ["| `" + esc(a) + "` | " + esc(b) + " | " + (esc(c) or "as the instrument") + " |" for a, b, c in rows]
    return "\n".join(lines)


def markdown() -> str:
    return "\n".join([
        BEGIN,
        "### Emulated Keysight 33522B: SCPI commands implemented (both channels)",
        "",
        _md(pg_table(), ("header", "what it does", "difference from the 33522B")),
        "",
        "### Emulated Keithley 2636B: TSP names implemented",
        "",
        _md(smu_table(), ("name", "kind", "difference from the 2636B")),
        END,
    ])


if __name__ == "__main__":
    print(markdown())
