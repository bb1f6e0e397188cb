#!/usr/bin/env bash
# Install pcm-hil into ./.venv (torch from the local CPU wheel first), then:
#   ./setup.sh demo [ARGS]   run the main job on the emulated chip
#   ./setup.sh test [ARGS]   run the test suite
#   ./setup.sh install       install only
set -euo pipefail
cd "$(dirname "$0")"
venv=${PCM_HIL_VENV:-.venv}
py=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first, pinned, so that a later torch>=... requirement never pulls a CUDA build
"$venv/bin/python" -c 'import torch' 2>/dev/null || "${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"
mode=${1:-install}
shift || true
case "$mode" in
  demo) exec "$venv/bin/pcm-hil" demo "$@" ;;
  test) exec "$venv/bin/python" -m pytest -q "$@" ;;
  install) echo "pcm-hil installed in $venv: activate with 'source $venv/bin/activate'" ;;
  *) echo "usage: ./setup.sh demo|test|install [ARGS]" >&2; exit 2 ;;
esac
