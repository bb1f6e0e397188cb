"""The bad-input table of docs/reliability.md, tried through the command line.

Each case gets a clear error naming the problem (exit 2; 3 for an unreachable
instrument), creates no run and changes no file that was there before.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
import socket
from pathlib import Path

import pytest
import torch

from pcm_hil import cli
from pcm_hil.chip import Geometry
from pcm_hil.emulator.instruments import VirtualBench
from pcm_hil.models import CHECKPOINTS
from pcm_hil.run_store import RunStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


class _Evil:
    """Unpickling it creates the file ``marker``: the test sees whether the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - runs code (creates a file) if anyone unpickles it
        return (open, (self.marker, "w"))


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A run directory with a noise model, a finished store run and a bench file."""
    d = tmp_path_factory.mktemp("lab")
    assert cli.main(["calibrate", "run", "--cells", "6000", "--first-cell", "100000", "--out", str(d / "noise.json"),
                     "--report", "none", "--run-dir", str(d), "--json"]) == 0
    assert cli.main(["store", "--model", "mlp-digits", "--noise-model", str(d / "noise.json"), "--run-dir", str(d),
                     "--report", "none", "--json"]) == 0
    with RunStore(d / "pcm-hil.sqlite") as store:
        runs = store.runs()
        run_id = runs.loc[runs["kind"] == "store", "run_id"].iloc[0]
    with VirtualBench(Geometry(1, 16, 16)) as vb:
        vb.bench_config().save(d / "bench.toml")  # its servers are gone after this: addresses that do not answer
    return d, _cases(d, run_id)


def _write(d: Path, name: str, data: bytes | str) -> str:
    p = d / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


def _cases(d: Path, run_id: str) -> dict[str, tuple[list[str], str]]:
    bench = (d / "bench.toml").read_text()
    noise = json.loads((d / "noise.json").read_text())
    other_chip = {**noise, "provenance": {**noise["provenance"], "chip_id": "bench:OTHER:1x16x16"}}
    db = (d / "pcm-hil.sqlite").read_bytes()
    sd = torch.load(CHECKPOINTS / "mlp-digits.pt", weights_only=True)
    (d / "evil.pt").write_bytes(pickle.dumps(_Evil(d / "PWNED")))
    torch.save({"fc9.weight": torch.zeros(3, 3)}, d / "foreign.pt")
    torch.save({k: v * float("nan") for k, v in sd.items()}, d / "nan.pt")
    store = ["store", "--model", "mlp-digits", "--noise-model", str(d / "noise.json"), "--run-dir", str(d),
             "--report", "none"]
    return {
        "bench-not-toml": (["demo", "--bench", _write(d, "b1.toml", "[board\n")], "not valid TOML"),
        "bench-unknown-key": (["demo", "--bench", _write(d, "b2.toml", bench + "\n[extra]\nx = 1\n")], "unknown key"),
        "bench-no-board": (["demo", "--bench", _write(d, "b3.toml", "[chip]\narrays = 1\n")],
                           r"\[board\] with a resource"),
        "bench-limit-above-range": (["demo", "--bench", _write(d, "b4.toml", bench.replace(
            "max_amplitude_v = 3.0", "max_amplitude_v = 7.0"))], "above the board's range"),
        "bench-bias-above-limit": (["demo", "--bench", _write(d, "b5.toml", bench.replace(
            "read_bias_v = 0.2", "read_bias_v = 0.5"))], "exceeds limits.max_read_bias_v"),
        "resource-nothing-listens": (["demo", "--bench", _write(d, "b6.toml", bench.replace(
            bench.split('resource = "')[1].split('"')[0], f"socket://127.0.0.1:{_closed_port()}", 1))],
            "cannot open serial resource"),
        "resource-unresolvable": (["demo", "--bench", _write(d, "b7.toml", bench.replace(
            bench.split('resource = "')[1].split('"')[0], "socket://no-such-host.invalid:5025", 1))],
            "Name or service not known|cannot open serial resource"),
        "tolerance-not-finite": (["demo", "--tolerance", "nan"], r"argument --tolerance: must be in \(0, 100\], got nan"),
        "retention-negative": (store + ["--retention", "-5"], r"argument --retention: must be in \[0, 10 years\]"),
        "retention-infinite": (store + ["--retention", "inf"], r"argument --retention: must be in \[0, 10 years\]"),
        "budget-too-small": (store + ["--pulse-budget", "5"], "too small"),
        "noise-model-other-chip": ([*store[:4], _write(d, "n1.json", json.dumps(other_chip)), *store[5:]],
                                   "fitted on 'bench:OTHER"),
        "noise-model-schema-version": ([*store[:4], _write(d, "n2.json", json.dumps({**noise, "schema_version": 99})),
                                        *store[5:]], "schema version 99 is not supported"),
        # values and schema checked on load, before any pulse (issue #17: NaN or negative sigmas were pulsed)
        "noise-model-sigma-nan": ([*store[:4], _write(d, "n4.json", json.dumps(_noise_with(
            noise, "read_noise", "a", float("nan")))), *store[5:]], "read_noise.a must be finite"),
        "noise-model-sigma-negative": ([*store[:4], _write(d, "n5.json", json.dumps(_noise_with(
            noise, "programming", "sigma_us", _negated_first(noise["programming"]["sigma_us"])))), *store[5:]],
            r"programming.sigma_us must be >= 0"),
        "noise-model-field-missing": ([*store[:4], _write(d, "n6.json", json.dumps(
            {k: v for k, v in noise.items() if k != "window"})), *store[5:]], "noise model .*window"),
        "run-dir-is-a-file": (["runs", "list", "--run-dir", _write(d, "not-a-dir", "x")], "not-a-dir is a file, not a directory"),
        "noise-model-not-json": ([*store[:4], _write(d, "n3.json", "{truncated"), *store[5:]], "noise model"),
        "run-store-corrupted": (["runs", "list", "--run-dir", str(_dir(d, "bad1", b"not a database" * 200))],
                                "not a readable SQLite database"),
        "run-store-truncated": (["runs", "list", "--run-dir", str(_dir(d, "bad2", db[: len(db) // 3]))],
                                "not a readable SQLite database|no run|schema"),
        "chip-state-truncated": (["load", run_id, "--run-dir", str(_copy_run(d, "bad3", run_id, truncate=True))],
                                 "not a saved emulated chip"),
        "resume-unknown-run": (["store", "--resume", "nope", "--run-dir", str(d)], "no run 'nope'"),
        "resume-finished-run": (["store", "--resume", run_id, "--run-dir", str(d)], "already done"),
        "resume-wrong-kind": (["calibrate", "run", "--resume", run_id, "--run-dir", str(d)],
                              "is a store run, not a calibration run"),
        "model-file-pickle": (store + ["--checkpoint", str(d / "evil.pt")], "not a loadable weights-only checkpoint"),
        "model-file-not-state-dict": (store + ["--checkpoint", _write(d, "t.pt", b"\x00" * 64)],
                                      "not a loadable weights-only checkpoint"),
        "model-file-foreign-keys": (store + ["--checkpoint", str(d / "foreign.pt")], "fc9.weight|does not match"),
        "model-weights-nan": (store + ["--checkpoint", str(d / "nan.pt")], "NaN or infinite"),
        "bn-samples-negative": (store + ["--bn-samples", "-1"], r"argument --bn-samples: must be in \[0, 100000\], got -1"),
        "chips-on-a-bench": (store + ["--bench", str(d / "bench.toml"), "--chips", "2"], "a bench has one chip"),
        "chips-above-programmings": (store + ["--programmings", "2", "--chips", "3"],
                                     r"chips must be an integer in \[1, min\(8, programmings = 2\)\]"),
        "model-unknown": ([*store[:2], "nope", *store[3:]], "unknown model 'nope'"),
        # no --noise-model: a late check would come after an on-the-spot calibration (pulses, a run)
        "data-dir-missing": (["store", "--model", "mlp-digits", "--data-dir", str(d / "nowhere"), "--run-dir", str(d),
                              "--report", "none"], "--data-dir .*nowhere is not a directory"),
        "own-model-no-checkpoint": ([*store[:2], _write(d, "net.py", "import torch.nn as nn\nclass Net(nn.Module):\n"
                                                       "    pass\n") + ":Net", *store[3:]],
                                    "give its weights with --checkpoint"),
    }


def _noise_with(noise: dict, part: str, key: str, value: object) -> dict:
    return {**noise, part: {**noise[part], key: value}}


def _negated_first(rows: list) -> list:
    """A copy of a nested list with its first number made negative."""
    out = json.loads(json.dumps(rows))
    inner = out
    while isinstance(inner[0], list):
        inner = inner[0]
    inner[0] = -abs(inner[0]) - 0.1
    return out


def _dir(d: Path, name: str, content: bytes) -> Path:
    sub = d / name
    sub.mkdir(exist_ok=True)
    (sub / "pcm-hil.sqlite").write_bytes(content)
    return sub


def _copy_run(d: Path, name: str, run_id: str, truncate: bool) -> Path:
    sub = d / name
    sub.mkdir(exist_ok=True)
    for f in [*d.glob(f"{run_id}*"), *d.glob("chip-*.npz")]:  # the run's files and the emulated chip
        data = f.read_bytes()
        (sub / f.name).write_bytes(data[: len(data) // 2] if truncate and f.suffix == ".npz" else data)
    with RunStore(d / "pcm-hil.sqlite") as src:
        src._db.execute(f"VACUUM INTO '{sub / 'pcm-hil.sqlite'}'")
    return sub


def _snapshot(d: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in d.rglob("*")
            if p.is_file() and ".locks" not in p.parts and not p.name.endswith((".sqlite", "-wal", "-shm"))}


def _runs(d: Path) -> list[dict]:
    """The runs and their status (a store's bytes change when SQLite switches it to WAL on open)."""
    with RunStore(d / "pcm-hil.sqlite") as store:
        return store.runs().to_dict(orient="records")


CASE_IDS = ["bench-not-toml", "bench-unknown-key", "bench-no-board", "bench-limit-above-range",
            "bench-bias-above-limit", "resource-nothing-listens", "resource-unresolvable", "tolerance-not-finite",
            "retention-negative", "retention-infinite", "budget-too-small", "noise-model-other-chip",
            "noise-model-schema-version", "noise-model-not-json", "noise-model-sigma-nan", "noise-model-sigma-negative",
            "noise-model-field-missing", "run-dir-is-a-file", "run-store-corrupted", "run-store-truncated",
            "chip-state-truncated", "resume-unknown-run", "resume-finished-run", "resume-wrong-kind",
            "model-file-pickle", "model-file-not-state-dict", "model-file-foreign-keys", "model-weights-nan",
            "bn-samples-negative", "chips-on-a-bench", "chips-above-programmings", "model-unknown", "own-model-no-checkpoint", "data-dir-missing"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_gets_a_clear_error_and_changes_nothing(lab, case, capsys, tmp_path, monkeypatch) -> None:
    d, cases = lab
    monkeypatch.chdir(tmp_path)  # a case without --run-dir uses ./runs: never the checkout's
    argv, match = cases[case]
    before, runs = _snapshot(d), _runs(d)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    print(f"{case}: {err.strip()}")
    assert code in (2, 3), err
    assert "Traceback" not in err and re.search(match, err), err
    assert err.count("\n") == 1, err  # one line
    assert not (d / "PWNED").exists()  # the pickle's payload never ran
    assert _runs(d) == runs  # no run was created or changed
    after = _snapshot(d)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that was there changed
    if case.startswith("bench-"):  # refused before anything is created (no ./runs store)
        assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_every_case_is_in_the_documented_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [c for c in CASE_IDS if f"`{c}`" not in text]
    assert not missing, f"docs/reliability.md lacks rows for {missing}"


def test_a_busy_port_is_one_line(capsys) -> None:
    """``emulate --port P`` where something listens on P (or P+1, P+2): exit 2, one line."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        for p in (port, port - 1):  # the board's port, then the SMU's (P+1)
            capsys.readouterr()
            code = cli.main(["emulate", "--port", str(p), "--geometry", "1", "16", "16"])
            err = capsys.readouterr().err
            assert code == 2 and "Address already in use" in err and err.count("\n") == 1, err
    finally:
        s.close()


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path) -> None:
    """A run directory that cannot take more bytes (RLIMIT_FSIZE: writes fail with EFBIG, as
    ENOSPC on a full disk): exit 2, one line, nothing pulsed (the emulated chip's file is written
    before the first pulse), no half-written file left; the run it began is listed, holding its
    cells until resumed or named with --overwrite."""
    import resource
    import signal
    import subprocess
    import sys

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    r = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "calibrate", "run", "--cells", "6000", "--run-dir",
                        str(tmp_path), "--out", str(tmp_path / "noise.json"), "--report", "none"],
                       capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert r.returncode == 2 and "no room to write" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.glob("*.tmp*")) and not (tmp_path / "noise.json").exists()
    with RunStore(tmp_path / "pcm-hil.sqlite") as store:
        assert store.runs()["status"].tolist() == ["killed (resumable)"]
