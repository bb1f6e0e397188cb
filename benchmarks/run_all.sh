#!/usr/bin/env bash
# Run every benchmark; write benchmarks/results/<name>.json.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p results
for b in emulator wire budgets faults; do
  pcm-hil benchmark "$b" --json | tee "results/$b.json"
done
