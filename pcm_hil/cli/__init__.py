"""The ``pcm-hil`` command: parse, call the application layer, render. Nothing imports it."""
from __future__ import annotations

import argparse
import errno
import sqlite3
import shlex
import sys
from typing import Sequence

from .. import __version__
from . import commands
from ..benchmarks import BUDGETS_SPARSITY
from .options import (SECONDS_UP_TO_10_YEARS, SEED, Parser, auto_or, budget_list, chip_options, choice_list, float_in,
                      float_list, int_in, json_option, nm_list, run_dir_option, seed_option)


def build_parser() -> Parser:
    p = Parser(prog="pcm-hil", description="Hardware-in-the-loop driver and controller for "
                                "phase-change-memory test chips, with an emulated bench.")
    p.add_argument("--version", action="version", version=f"pcm-hil {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    js, rd, chip = json_option(), run_dir_option(), chip_options()
    ow = argparse.ArgumentParser(add_help=False)
    ow.add_argument("--overwrite", metavar="RUN", help="reuse the cells of this earlier run (its model or data on "
                                                         "the chip are lost; see 'pcm-hil runs list')")

    d = sub.add_parser("demo", parents=[chip, rd, ow, js], help="program and read back an array; print per-level statistics")
    d.add_argument("--cells", type=int_in(1, 100_000_000), default=20_000, help="cells to program (default 20000)")
    d.add_argument("--levels", type=int_in(1, 64), default=8, help="target levels across the window (default 8)")
    d.add_argument("--spares", type=float_in(0, 1), default=0.05,
                   help="spare cells screened beside --cells, as a fraction of it, standing in for stuck cells the "
                        "screen finds (RESET, SET, RESET, a read after each); 0: no screen (default 0.05)")
    d.add_argument("--tolerance", type=float_in(0, 100, lo_open=True), default=0.5,
                   help="verify tolerance in µS (default 0.5)")
    d.add_argument("--read-after", type=SECONDS_UP_TO_10_YEARS, nargs="+", default=[20.0, 3600.0, 86400.0], metavar="S",
                   help="read back this many seconds after programming (default 20 3600 86400)")
    d.add_argument("--noise-model", help="calibrated noise model: its loop settings and saturation (default: the "
                                         "chip's latest calibration in the run directory, else a short measurement)")
    d.set_defaults(func=commands.demo)

    b = sub.add_parser("benchmark", aliases=["bench"], parents=[js, seed_option()],
                       help="benchmarks: printed figures, not pass/fail ('bench' is an alias)")
    b.add_argument("what", choices=["emulator", "wire", "budgets", "faults", "devices"])
    b.add_argument("--cells", type=int_in(1, 100_000_000), default=None,
                   help="batch size (default: 1e6 emulator, 1e5 wire)")
    b.add_argument("--repeats", type=int_in(1, 1000), default=None,
                   help="emulator, wire: timing repeats (default 7); budgets: programmings per setup (default 5)")
    b.add_argument("--model", default="lenet5-fmnist", help="budgets: registry model (default lenet5-fmnist)")
    b.add_argument("--profile", default="pcm-realistic", help="emulator: device profile (preset name or file)")
    b.add_argument("--replicas", type=float_list(1, 8), default=(1.0, 1.25, 1.5, 2.0), metavar="R,R,...",
                   help="budgets: importance side, mean replicas per kept weight placed per output channel, each "
                        "swept over pulse budgets (default 1,1.25,1.5,2; the store job chooses its own per chip)")
    b.add_argument("--sparsity", type=float_in(0, 0.999), default=BUDGETS_SPARSITY,
                   help=f"budgets: magnitude pruning of the stored model (default {BUDGETS_SPARSITY:g}, where "
                        "compression alone costs nothing and the accuracy band is storage's; the store job's 0.75 "
                        "leaves storage 0.06 pp of the 0.5 pp band)")
    b.add_argument("--devices", type=int_in(0, 1000), default=20,
                   help="devices: random devices besides every preset (default 20)")
    b.add_argument("--quick", action="store_true", help="devices: a small-cell version (4000 calibration cells)")
    b.add_argument("--store", action=argparse.BooleanOptionalAction, default=True,
                   help="devices: a LeNet-5 store on every device after the demo (default; about 1 min each, "
                        "30 min for the 25 devices); --no-store: calibrate, validate and demo only")
    b.set_defaults(func=commands.benchmark)

    e = sub.add_parser("emulate", parents=[js, seed_option("chip seed (default 0)")],
                       help="serve the emulated board, SMU and pulse generator on loopback")
    e.add_argument("--port", type=int_in(0, 65533), default=0, help="board port P (SMU P+1, PG P+2); 0 picks free ports")
    e.add_argument("--host", default="127.0.0.1", help="loopback address to bind (never another)")
    e.add_argument("--ready-file", metavar="F", help="write the resource strings as JSON here once serving")
    e.add_argument("--bench-file", metavar="F", help="write a bench TOML file for these servers here")
    e.add_argument("--geometry", type=int, nargs=3, default=[4, 512, 512], metavar=("ARRAYS", "ROWS", "COLS"))
    e.add_argument("--profile", default="pcm-realistic", help="device profile: preset name or .toml/.json file")
    e.add_argument("--fault-rate", type=float_in(0, 1), default=0.0, help="probability of a fault per board transaction")
    e.add_argument("--faults", default="drop,delay,corrupt,truncate,error,silent,stuck",
                   help="comma-separated fault kinds to inject")
    e.add_argument("--fault-seed", type=SEED, default=0, help="seed of the fault draws")
    e.add_argument("--fault-delay", type=float_in(0, 3600), default=2.0, help="seconds a delayed or silent board holds back")
    e.set_defaults(func=commands.emulate)

    c = sub.add_parser("calibrate", help="measure the chip and fit its noise model, or validate a model")
    csub = c.add_subparsers(dest="action", required=True, parser_class=Parser)
    cr = csub.add_parser("run", parents=[chip, rd, ow, js], help="calibrate: measure and fit")
    cr.add_argument("--cells", type=int_in(64, 10_000_000), default=None,
                    help="cells to use (default: the calibration's, 40000: about 830 per level and tolerance)")
    cr.add_argument("--first-cell", type=int_in(0, 2**40), default=None,
                    help="first cell index used (default: the first free cells; held cells are refused)")
    cr.add_argument("--out", default="noise-model.json", help="model file to write (JSON)")
    cr.add_argument("--report", default=None, help="PNG report path (default next to --out; 'none' to skip)")
    cr.add_argument("--resume", metavar="RUN", help="continue a calibration run that was stopped or killed")
    cr.set_defaults(func=commands.calibrate, resume_command="pcm-hil calibrate run")
    cv = csub.add_parser("validate", parents=[chip, rd, ow, js], help="program fresh cells and compare with the model")
    cv.add_argument("noise_model", metavar="NOISE_MODEL", help="noise model JSON file")
    cv.add_argument("--cells", type=int_in(1, 10_000_000), default=10_000, help="fresh cells to program (default 10000)")
    cv.add_argument("--tolerance", type=float_in(0, 10, lo_open=True), default=0.5,
                    help="calibrated tolerance to validate (µS)")
    cv.add_argument("--max-pulses", type=int_in(1, 1000), default=20, help="pulse cap to validate")
    cv.set_defaults(func=commands.calibrate)

    st = sub.add_parser("store", parents=[chip, rd, ow, js], help="the main job: store a model in the chip and read it back")
    st.add_argument("--model", default="lenet5-fmnist",
                    help="registry model (default lenet5-fmnist), or your own architecture as file.py:Class or "
                         "package.module:Class, built with no arguments (needs --checkpoint and --data-dir)")
    st.add_argument("--checkpoint", help="your own state-dict checkpoint for that architecture")
    st.add_argument("--data-dir", help="evaluation data: a cifar-10-batches-py directory, or x_test.npy/y_test.npy "
                                       "(x_train.npy/y_train.npy too, for fine-tuning and importance)")
    st.add_argument("--noise-model", help="calibrated noise model (default: calibrate now on the chip's last cells)")
    st.add_argument("--code", default="sign", choices=["sign", "pair", "offset", "split", "multilevel"])
    st.add_argument("--percentile", type=float_in(50, 100), default=99.5, help="clip |w| at this percentile per tensor")
    st.add_argument("--mask-in-cells", action=argparse.BooleanOptionalAction, default=False,
                    help="sign code on a pruned model: keep the pruning mask in the cells (a pruned weight's cell "
                         "only RESET, kept weights from a gap above it) instead of the range-coded mask (default "
                         "off: 6 %% fewer cells on pcm-realistic, but 0.7-6 pp lost on 6 of 18 devices of "
                         "'pcm-hil bench devices')")
    st.add_argument("--mask-gap", type=float_in(0, 1000, lo_open=True), default=None, metavar="US",
                    help="with --mask-in-cells: the gap in µS (default: from the calibrated noise model)")
    st.add_argument("--sparsity", type=float_in(0, 0.999), default=0.75,
                    help="magnitude pruning before storage (default 0.75)")
    st.add_argument("--bn-samples", type=int_in(0, 100_000), default=1000,
                    help="training inputs that re-estimate batch-norm statistics after read-back, for models "
                         "with BN layers (default 1000; 0: keep the stored statistics)")
    st.add_argument("--no-drift-compensation", dest="drift_compensation", action="store_false",
                    help="decode the reads as read, without the reference cells' correction (an ablation; "
                         "the reference cells are still programmed and counted)")
    st.add_argument("--replicas", type=auto_or(float_in(1, 8)), default="auto",
                    help="mean replicas per kept weight, placed by importance: a number in [1, 8], or 'auto' "
                         "(default): the fewest of 1.25, 1.5, ..., 4 whose predicted loss on the calibrated chip is "
                         "within --max-storage-loss")
    st.add_argument("--max-storage-loss", type=float_in(0, 100, lo_open=True), default=0.5, metavar="PP",
                    help="--replicas auto: predicted validation accuracy loss allowed against the compressed "
                         "model, pp (default 0.5)")
    st.add_argument("--replicas-per", default="channel", choices=["channel", "weight"],
                    help="one replica count per output channel (default; its map is nearly free) or per weight")
    st.add_argument("--importance", default="fisher", choices=["fisher", "hessian", "magnitude"])
    st.add_argument("--allocation", default="importance", choices=["importance", "uniform"])
    st.add_argument("--pulse-budget", type=float_in(0, 1e15, lo_open=True), default=None,
                    help="total pulses (default: the fewest whose predicted loss is within --loss-margin of the least)")
    st.add_argument("--target-loss", type=float_in(0, 1e6, lo_open=True), default=None,
                    help="instead of a pulse budget: the fewest pulses whose predicted loss increase stays below this")
    st.add_argument("--loss-margin", type=float_in(0, 10, lo_open=True), default=None,
                    help="neither given: the fewest pulses whose predicted loss is within this fraction of the least "
                         "reachable (default 0.05)")
    st.add_argument("--retention", type=SECONDS_UP_TO_10_YEARS, default=86400.0,
                    help="seconds between programming and read-back")
    st.add_argument("--programmings", type=int_in(1, 100), default=5,
                    help="programmings of the layout the stored accuracy is averaged over, with a 95 %% interval "
                         "(default 5: the stored one and 4 copies on free cells after it)")
    st.add_argument("--chips", type=int_in(1, 8), default=None,
                    help="chips the programmings are spread over, round robin: the job's chip and emulated "
                         "sibling chips (chip seed + 1, ...); default 2 on the emulator, 1 on a bench")
    st.add_argument("--medium-cells", type=int_in(256, 1_000_000), default=16384,
                    help="data cells per density of the digital-medium test (default 16384)")
    st.add_argument("--digital-nm", type=nm_list, default=(), metavar="N:M,...",
                    help="also give the digital competitor N:M structured starts (e.g. 2:4,1:4; mask coded as N:M "
                         "groups); off by default: on lenet5-fmnist they never won")
    st.add_argument("--report", default=None, help="PNG report path (default RUN_DIR/RUN.png; 'none' to skip)")
    st.add_argument("--resume", metavar="RUN", help="continue a store run that was stopped or killed "
                                                     "(its settings are the run's own; other options are ignored)")
    st.set_defaults(func=commands.store, resume_command="pcm-hil store")

    pl = sub.add_parser("plan", parents=[chip, rd, ow, js],
                        help="the store configuration with the fewest total cells that keeps accuracy within a drop "
                             "of the reference, chosen on the noise model (no pulses), then stored and measured")
    pl.add_argument("--model", default="lenet5-fmnist", help="registry model (default lenet5-fmnist)")
    pl.add_argument("--max-accuracy-drop", type=float_in(0, 50, shown="[0, 50] pp"), required=True, metavar="PP",
                    help="accuracy the stored model may lose against the float reference, in percentage points "
                         "(validation split; the lower 95 %% bound of the predicted mean must stay above it)")
    pl.add_argument("--noise-model", help="calibrated noise model (default: calibrate now on the chip's last cells)")
    pl.add_argument("--sparsities", type=float_list(0, 0.99), default=(0.0, 0.5, 0.75, 0.9), metavar="S,S,...",
                    help="pruning fractions tried, each in [0, 0.99] (default 0,0.5,0.75,0.9)")
    pl.add_argument("--codes", type=choice_list(("sign", "offset", "pair")), default=("sign",),
                    metavar="CODE,...", help="codes tried, among sign, offset, pair (default sign: the offset "
                                             "code's accuracy is predicted 0.7-1.1 pp too high)")
    pl.add_argument("--replicas", type=float_list(1, 8), default=(1.0, 1.25, 1.5, 2.0, 3.0), metavar="R,R,...",
                    help="mean replicas per kept weight tried, each in [1, 8] (default 1,1.25,1.5,2,3)")
    pl.add_argument("--replicas-per", type=choice_list(("channel", "weight")), default=("channel",),
                    metavar="WHAT,...", help="replica maps tried: channel, weight (default channel)")
    pl.add_argument("--budget-tolerances", type=budget_list, default=(None, 1.0), metavar="T,...",
                    help="pulse budgets tried, as what uniform ±T µS windows (cap 20) would spend, T in (0, 10]; "
                         "'default' is the store job's own budget (default: default,1)")
    pl.add_argument("--max-draws", type=int_in(4, 1000), default=24,
                    help="noise-model draws at most per candidate (default 24)")
    pl.add_argument("--final-draws", type=int_in(2, 1000), default=24,
                    help="draws at least of the chosen configuration that give the predicted test accuracy; more "
                         "follow, up to --final-max-draws, until its 95 %% interval is within ±0.1 pp (default 24)")
    pl.add_argument("--final-max-draws", type=int_in(2, 10000), default=240,
                    help="draws at most of the chosen configuration (default 240; fewer for a slow model, whose "
                         "interval is then stated as it is)")
    pl.add_argument("--retention", type=SECONDS_UP_TO_10_YEARS, default=86400.0,
                    help="seconds between programming and read-back")
    pl.add_argument("--programmings", type=int_in(1, 100), default=5,
                    help="programmings the measured accuracy is averaged over (default 5)")
    pl.add_argument("--chips", type=int_in(1, 8), default=None,
                    help="chips the programmings are spread over (as for store; default 2 on the emulator, 1 on a "
                         "bench)")
    pl.add_argument("--medium-cells", type=int_in(256, 1_000_000), default=16384,
                    help="data cells per density of the digital-medium test (default 16384)")
    pl.add_argument("--no-digital-baseline", action="store_true",
                    help="skip the store job's search for the strongest digital competitor (faster)")
    pl.add_argument("--no-store", action="store_true", help="only plan and predict: no store, no pulses "
                                                             "(a calibration still runs without --noise-model)")
    pl.set_defaults(func=commands.plan)

    ld = sub.add_parser("load", parents=[chip, rd, js], help="read a stored model back from the chip and evaluate it")
    ld.add_argument("run", help="run id of a store run")
    ld.add_argument("--wait", type=SECONDS_UP_TO_10_YEARS, default=0.0,
                    help="let this many more seconds pass first (emulator)")
    ld.set_defaults(func=commands.load)

    r = sub.add_parser("runs", parents=[rd, js], help="list runs in the store or export one to Parquet/CSV")
    r.add_argument("action", choices=["list", "export"])
    r.add_argument("run", nargs="?", help="run id (for export)")
    r.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    r.add_argument("--out", help="export directory (default RUN-FORMAT)")
    r.set_defaults(func=commands.runs)

    from ..study.run import study_arguments

    sy = sub.add_parser("study", parents=[study_arguments(), js],
                        help="the study: analog against digital storage over models, settings, retention times "
                             "and chips, in parallel (or on Ray), written to docs/results.md")
    sy.set_defaults(func=commands.study)

    pr = sub.add_parser("profile", parents=[js], help="list or show emulator device profiles")
    pr.add_argument("action", choices=["list", "show", "random"],
                    help="random: a plausible unknown device drawn from published ranges (--seed)")
    pr.add_argument("name", nargs="?", default="pcm-realistic")
    pr.add_argument("--seed", type=SEED, default=0, help="random: seed of the drawn device (default 0)")
    pr.set_defaults(func=commands.profile)
    return p


def _resume_hint(args: argparse.Namespace, run_id: str) -> str:
    """The command that continues run ``run_id``: the same chip, run directory and outputs."""
    words = [*args.resume_command.split(), "--resume", run_id]
    for option in ("bench", "run_dir", "out", "report"):
        value = getattr(args, option, None)
        if value is not None and not (option == "run_dir" and value == "runs") and \
                not (option == "out" and value == "noise-model.json"):
            words += [f"--{option.replace('_', '-')}", str(value)]
    return shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    from pcm_hil_drivers.errors import DriverError

    from ..checkpoint import Interrupted
    from ..run_store import RunLocked

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a refused option (2), or --help / --version (0)
        return int(exc.code or 0)
    try:
        if getattr(args, "bench", None):  # a bad bench file is refused before the run store is created
            from ..bench import BenchConfig

            BenchConfig.load(args.bench)
        return int(args.func(args) or 0)
    except Interrupted as exc:
        print(f"pcm-hil: stopped during {exc.stage}; outputs are off. Continue with: {_resume_hint(args, exc.run_id)}",
              file=sys.stderr)
        return 130
    except (ValueError, RunLocked) as exc:
        print(f"pcm-hil: error: {exc}", file=sys.stderr)
        return 2
    except DriverError as exc:  # the bench: unreachable, not answering, or an instrument error
        notes = "".join(f"\n  {n}" for n in getattr(exc, "__notes__", []))
        print(f"pcm-hil: instrument error ({type(exc).__name__}): {exc}{notes}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        return 0
    except (OSError, sqlite3.OperationalError) as exc:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or \
            isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
        if not full:
            raise
        # what was committed before stays (each batch its own transaction, the chip file replaced whole)
        print(f"pcm-hil: error: no room to write ({exc.strerror if isinstance(exc, OSError) else exc}): "
              f"{getattr(exc, 'filename', None) or 'a file of the run directory'}; free space, then resume the run "
              "('pcm-hil runs list' names it) or start again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pcm-hil: interrupted", file=sys.stderr)
        return 130
