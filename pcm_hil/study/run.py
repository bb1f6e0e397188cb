"""``pcm-hil study`` and ``lab_scripts/study.py``: one entry point, options declared once.

:func:`study_arguments` is the parent parser both use; :func:`run` takes the parsed
options, prints the estimate, runs the sweep with a progress bar and writes the report.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from .backends import backend_for
from .grid import DAY_S, FULL_SETTINGS, HOUR_S, MODELS, YEAR_S, StudyConfig
from .report import build
from .sweep import StudyResult, estimate_seconds, finished_points, run_study


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, 1024], got {text!r}") from None
    if not 1 <= v <= 1024:
        raise argparse.ArgumentTypeError(f"must be in [1, 1024], got {v}")
    return v


def _models(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"models are comma-separated among {', '.join(MODELS)}; got {text!r}")
    return names


RETENTIONS = {"hour": HOUR_S, "day": DAY_S, "year": YEAR_S}


def _names(text: str, known: list[str], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{what} are comma-separated, each once, among {', '.join(known)}; "
                                         f"got {text!r}")
    return names


def _settings(text: str) -> tuple[str, ...]:
    return _names(text, [s.name for s in FULL_SETTINGS], "settings")


def _retentions(text: str) -> tuple[str, ...]:
    return _names(text, list(RETENTIONS), "retention times")


def study_arguments() -> argparse.ArgumentParser:
    """The study's options, for the command line and the lab script alike."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--quick", action="store_true",
                   help="a few minutes: mlp-digits, 1 day, 2 chip seeds, 2 programmings (a labelled sample)")
    p.add_argument("--models", type=_models, default=None,
                   help=f"comma-separated models (default: the study's three; --quick: mlp-digits); among {', '.join(MODELS)}")
    p.add_argument("--settings", type=_settings, default=None,
                   help="comma-separated analog settings of the curve (default all: "
                        f"{','.join(s.name for s in FULL_SETTINGS)}); a smaller grid for a slow model")
    p.add_argument("--retentions", type=_retentions, default=None,
                   help="comma-separated retention times among hour, day, year (default all three)")
    p.add_argument("--no-ablations", action="store_true", help="skip the ablations (each strategy off in turn)")
    p.add_argument("--jobs", type=_positive_int, default=None, help="worker processes (default: the number of cores)")
    p.add_argument("--address", default=None,
                   help="run the points on the Ray cluster at this address (ray://HEAD:10001, HEAD:6379, or local: a Ray instance "
                        "started on this machine; needs pip install ray)")
    p.add_argument("--run-dir", default="runs/study",
                   help="the study's run directory: index, chips, points, model cache (default runs/study); "
                        "finished points there are reused")
    p.add_argument("--out", default="docs/results.md", help="the report (default docs/results.md; plots beside it)")
    p.add_argument("--no-digital", action="store_true",
                   help="skip the digital competitor's search (no ratios; much faster)")
    p.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the points finished in --run-dir and run nothing (it names the "
                        "points not yet run)")
    return p


def config_of(args: argparse.Namespace) -> StudyConfig:
    from dataclasses import replace

    cfg = StudyConfig.quick_preset(args.models) if args.quick else \
        (StudyConfig(models=args.models) if args.models else StudyConfig())
    if args.settings:
        cfg = replace(cfg, settings=tuple(s for s in FULL_SETTINGS if s.name in args.settings),
                      ablation_base=cfg.ablation_base if cfg.ablation_base in args.settings else args.settings[0])
    if args.retentions:
        kept = tuple(RETENTIONS[r] for r in args.retentions)
        cfg = replace(cfg, retentions_s=kept, ablation_retention_s=cfg.ablation_retention_s
                      if cfg.ablation_retention_s in kept else kept[0])
    if args.no_ablations:
        cfg = replace(cfg, ablation_base="")
    return replace(cfg, digital_baseline=not args.no_digital)


def _hms(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{max(1, m)} min"


def run(args: argparse.Namespace, command: str, say: Callable[[str], None] | None = None,
        bars: bool = False) -> dict[str, Any]:
    """Estimate, sweep, report; returns the summary (JSON-able). ``say`` prints the estimate line."""
    from ..app import StageProgress

    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    cfg = config_of(args)
    env = {"PYTHONHASHSEED": "0"}
    slots = args.jobs or os.cpu_count() or 1
    backend = backend_for(args.jobs, args.address, env) if not (args.estimate_only or args.report_only) else None
    if backend is not None:
        slots = backend.slots
    est = estimate_seconds(cfg, args.run_dir, slots)
    where = ("nothing (report only)" if args.report_only else "Ray at " + args.address if args.address
             else f"{slots} worker processes")
    say(f"study: {est['points']} points ({est['points_left']} left) on {where}; estimated {_hms(est['seconds'])} "
        f"({est['basis']})")
    summary: dict[str, Any] = {"estimate": est, "config": cfg.as_dict()}
    if args.report_only:
        done = finished_points(args.run_dir)
        rows = [done[p.key()] for p in cfg.points() if p.key() in done]
        if not rows:
            raise ValueError(f"--report-only: no finished point of this study in {args.run_dir} "
                             "(run the study there first)")
        summary.update(StudyResult(cfg, rows, reused=len(rows), run_dir=str(args.run_dir)).summary())
        summary["report"] = build(rows, cfg, args.run_dir, args.out, command, cfg.ablation_settings()[1])
        return summary
    if backend is None:
        return summary
    try:
        with StageProgress(bars) as bar:
            result = run_study(cfg, args.run_dir, backend, progress=bar)
    finally:
        backend.close()
    if result.failed:
        say(f"study: {len(result.failed)} point(s) failed (rerun to retry them): "
            + "; ".join(f"{f['model']} {f['setting']}: {f['error'][:200]}" for f in result.failed[:3]))
    figures = build(result.rows, cfg, args.run_dir, args.out, command, cfg.ablation_settings()[1])
    summary.update(result.summary())
    summary["report"] = figures
    return summary

