"""Every lab script runs on the emulator and writes what it promises."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from pcm_hil import cli

SCRIPTS = Path(__file__).resolve().parents[1] / "lab_scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"lab_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_programming_curve(tmp_path, capsys) -> None:
    out = tmp_path / "pc"
    assert _script("programming_curve").main(["--amplitudes", "0.8", "1.2", "--pulses", "5", "--cells", "50",
                                              "--out", str(out), "--run-dir", str(tmp_path)]) == 0
    rows = _rows(out.with_suffix(".csv"))
    assert len(rows) == 2 * 50 * 6  # RESET read plus 5 SET pulses, per cell and amplitude
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_retention(tmp_path, capsys) -> None:
    out = tmp_path / "ret"
    assert _script("retention").main(["--levels", "4", "16", "--cells", "200", "--until", "86400", "--points", "4",
                                      "--out", str(out), "--run-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "nu_mean" in table and len(_rows(out.with_suffix(".csv"))) == 2 * 200 * 4
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.slow
def test_calibrate_chip(tmp_path, capsys) -> None:
    out = tmp_path / "model.json"
    assert _script("calibrate_chip").main(["--cells", "4000", "--validate-cells", "0", "--out", str(out),
                                           "--run-dir", str(tmp_path)]) == 0
    assert json.loads(out.read_text())["schema_version"] == 2


@pytest.mark.slow
def test_model_retention_tracks_a_stored_model_for_a_year(tmp_path, capsys) -> None:
    assert cli.main(["store", "--model", "mlp-digits", "--retention", "60", "--run-dir", str(tmp_path),
                     "--report", "none", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    out = tmp_path / "mr"
    script = _script("model_retention")
    assert script.main([run["run_id"], "--run-dir", str(tmp_path), "--until", str(365 * 86400.0), "--points", "4",
                        "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    ages = [x["age_s"] for x in r["reads"]]
    assert len(ages) == 4 and ages[0] >= 60 and ages[-1] == pytest.approx(365 * 86400.0, rel=1e-3)
    # drift lowers every read; the reference cells' gain grows with age to undo it
    gains = [x["gain_median"] for x in r["reads"]]
    assert all(b > a for a, b in zip(gains, gains[1:])) and gains[-1] > 1.5
    # the first read matches what the store job measured (same cells, same age)
    assert abs(r["reads"][0]["accuracy"] - run["accuracy_stored"]) < 0.03
    assert out.with_suffix(".png").stat().st_size > 10_000 and len(_rows(out.with_suffix(".csv"))) == 4
    # asking for the past is refused, with the age the chip is at now
    with pytest.raises(SystemExit):
        script.main([run["run_id"], "--run-dir", str(tmp_path), "--until", "10"])
    assert "later than the chip's age now" in capsys.readouterr().err


def test_lab_scripts_claim_free_cells_and_never_pulse_a_stored_model(tmp_path, capsys) -> None:
    from pcm_hil.emulator import EmulatedChip
    from pcm_hil.run_store import CellClaim, RunStore

    chip = EmulatedChip(seed=0)
    with RunStore(tmp_path / "pcm-hil.sqlite") as store:  # a stored model holds cells 0-999
        model = store.create_run("store", {"chip_id": chip.chip_id()},
                                 CellClaim(chip.chip_id(), chip.geometry.n_cells, 1000, 0))
        store.finish(model)
    for name, argv in (("programming_curve", ["--amplitudes", "1.0", "--pulses", "2", "--cells", "100"]),
                       ("retention", ["--levels", "8", "--cells", "100", "--points", "3"])):
        assert _script(name).main([*argv, "--out", str(tmp_path / name), "--run-dir", str(tmp_path)]) == 0
    with RunStore(tmp_path / "pcm-hil.sqlite") as store:
        runs = store.runs()
        for run_id in runs[runs["kind"].isin(["programming_curve", "retention"])]["run_id"]:
            assert store.cells_of(run_id).min() >= 1000  # after the model's cells, never on them
    state = EmulatedChip.load_state(next(tmp_path.glob("chip-*.npz")))
    assert not state.pulse_count[:1000].any()
