#!/usr/bin/env python3
"""The study (issue #14): analog storage against the strongest digital storage on the same
chip, over models, analog settings, retention times and chip seeds; writes docs/results.md.

The same code as ``pcm-hil study`` (``pcm_hil.study.run``):

    python lab_scripts/study.py --quick                  # a few minutes: a labelled sample
    python lab_scripts/study.py --run-dir runs/study     # the full study (hours; resumable)
    python lab_scripts/study.py --address ray://HEAD:10001   # on a Ray cluster
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from pcm_hil.study.run import run, study_arguments


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[study_arguments()])
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = p.parse_args(argv)
    try:
        r = run(args, "python lab_scripts/study.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                bars=not args.json and sys.stderr.isatty())
    except ValueError as exc:
        print(f"study.py: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r, default=str))
    elif "report" in r:
        print(f"report: {r['report']['out']}; {r['computed']} points run, {r['reused']} reused")
    return 1 if r.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
