#!/usr/bin/env bash
# Run every benchmark; write bench/results/<name>.json.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p results
for b in emulator wire budgets faults; do
  pcm-hil bench "$b" --json | tee "results/$b.json"
done
