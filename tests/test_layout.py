"""The layer contract: which part of pcm-hil may import which, checked on the source.

transport and wire protocols (``pcm_hil_drivers``) and fitting (``pcm_hil_noisemodel``)
import nothing of pcm-hil; the chip interface nothing above it; procedures never the
application layer or the command line; nothing imports the command line; no module
imports another module's private names.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"pcm_hil": "pcm_hil", "drivers": "pcm_hil_drivers", "calibration": "pcm_hil_noisemodel",
           "lab_scripts": "lab_scripts"}
PROJECT = ("pcm_hil", "pcm_hil_drivers", "pcm_hil_noisemodel")

# module prefix → project modules it may import (prefixes); the first matching rule applies
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("pcm_hil_drivers", ("pcm_hil_drivers",)),
    ("pcm_hil_noisemodel", ("pcm_hil_noisemodel",)),
    ("pcm_hil.cli", PROJECT),
    ("pcm_hil.app", ("pcm_hil.__init__", "pcm_hil.app", "pcm_hil.chip", "pcm_hil.calibrate", "pcm_hil.checkpoint", "pcm_hil.run_store",
                     "pcm_hil.bench", "pcm_hil.emulator", "pcm_hil_noisemodel")),
    ("pcm_hil.benchmarks", ("pcm_hil.benchmarks", "pcm_hil.app", "pcm_hil.bench", "pcm_hil.calibrate", "pcm_hil.checkpoint",
                            "pcm_hil.chip", "pcm_hil.demo", "pcm_hil.emulator", "pcm_hil.models", "pcm_hil.program",
                            "pcm_hil.run_store", "pcm_hil.screening", "pcm_hil.store_job", "pcm_hil_noisemodel")),
    ("pcm_hil.study", ("pcm_hil.study", "pcm_hil.app", "pcm_hil.chip", "pcm_hil.coding", "pcm_hil.store_job",
                       "pcm_hil_noisemodel")),
    ("pcm_hil.chip", ()),
    ("pcm_hil.emulator.instruments", ("pcm_hil.emulator", "pcm_hil.chip", "pcm_hil.bench.config",
                                      "pcm_hil_drivers", "pcm_hil.__init__")),
    ("pcm_hil.emulator", ("pcm_hil.emulator", "pcm_hil.chip")),
    ("pcm_hil.bench", ("pcm_hil.bench", "pcm_hil.chip", "pcm_hil_drivers")),
    ("pcm_hil.program", ("pcm_hil.chip", "pcm_hil_noisemodel")),
    ("pcm_hil.run_store", ()),
    ("pcm_hil.checkpoint", ("pcm_hil.chip", "pcm_hil.program", "pcm_hil.run_store")),
    ("pcm_hil.cells", ("pcm_hil.chip", "pcm_hil.run_store")),
    ("pcm_hil.calibrate", ("pcm_hil.__init__", "pcm_hil.checkpoint", "pcm_hil.chip", "pcm_hil.program",
                           "pcm_hil.run_store", "pcm_hil_noisemodel")),
    ("pcm_hil.store_job", ("pcm_hil.__init__", "pcm_hil.store_job", "pcm_hil.cells", "pcm_hil.checkpoint", "pcm_hil.chip",
                           "pcm_hil.coding", "pcm_hil.datasets", "pcm_hil.models", "pcm_hil.program",
                           "pcm_hil.run_store", "pcm_hil_noisemodel")),
    ("pcm_hil.demo", ("pcm_hil.__init__", "pcm_hil.chip", "pcm_hil.program", "pcm_hil.screening")),
    ("pcm_hil.screening", ("pcm_hil.chip", "pcm_hil.program")),
    ("pcm_hil.coding", ()),
    ("pcm_hil.datasets", ()),
    ("pcm_hil.models", ()),
    ("pcm_hil.table", ()),
    ("pcm_hil.__init__", ("pcm_hil.chip",)),
    ("lab_scripts", PROJECT),  # anything but the command line (see below)
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import in ``path``, resolved."""
    mod = _module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    if path.name == "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if not node.module:  # "from . import x": x is a module of the package, or a name of its __init__
                out += [(f"{target}.{n}" if not n.startswith("__") else f"{target}.__init__", [], node.lineno)
                        for n in names]
            else:
                out.append((target, names, node.lineno))
    return out


def _sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def _rule(mod: str) -> tuple[str, ...]:
    for prefix, allowed in RULES:
        if mod == prefix or mod.startswith(prefix + ".") or (prefix.endswith("__init__") and mod == prefix[:-9]):
            return allowed
    raise AssertionError(f"no layer rule covers {mod}: add it to RULES")


def _within(target: str, allowed: tuple[str, ...]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


def _offenders(mod: str, imports: list[tuple[str, list[str], int]]) -> list[str]:
    """Imports of ``mod`` that its layer rule does not allow."""
    allowed = _rule(mod)
    out = []
    for target, _, line in imports:
        if target.split(".")[0] not in PROJECT or target == mod or target.startswith(mod + "."):
            continue
        if target == "pcm_hil":
            target = "pcm_hil.__init__"
        if not _within(target, allowed):
            out.append(f"line {line}: {target}")
    return out


def _private(imports: list[tuple[str, list[str], int]]) -> list[str]:
    return [f"line {line}: {name} from {target}" for target, names, line in imports
            for name in names if name.startswith("_") and not name.startswith("__")]


def _uses_cli(mod: str, imports: list[tuple[str, list[str], int]]) -> bool:
    return not mod.startswith("pcm_hil.cli") and any(t == "pcm_hil.cli" or t.startswith("pcm_hil.cli.")
                                                     for t, _, _ in imports)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    mod = _module_name(path)
    assert _offenders(mod, _imports(path)) == [], f"{mod} may import only {_rule(mod)}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_cross_modules(path: Path) -> None:
    assert _private(_imports(path)) == []


def test_nothing_imports_the_command_line() -> None:
    assert [str(p.relative_to(ROOT)) for p in _sources() if _uses_cli(_module_name(p), _imports(p))] == []


def test_the_contract_sees_a_violation() -> None:
    """The checker itself: imports that break the contract are found, allowed ones are not."""
    assert _offenders("pcm_hil.program", [("pcm_hil.store_job.job", [], 1)]) == ["line 1: pcm_hil.store_job.job"]
    assert _offenders("pcm_hil_drivers.base", [("pcm_hil.chip", [], 3)]) == ["line 3: pcm_hil.chip"]
    assert _offenders("pcm_hil.program", [("pcm_hil.chip", ["Chip"], 1), ("numpy", [], 2)]) == []
    assert _private([("pcm_hil.store_job.job", ["_restore"], 7)]) == ["line 7: _restore from pcm_hil.store_job.job"]
    assert _uses_cli("lab_scripts.retention", [("pcm_hil.cli", ["main"], 1)])
