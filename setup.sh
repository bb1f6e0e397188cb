#!/usr/bin/env bash
# Install pcm-hil into ./.venv (torch from the local CPU wheel first, Fashion-MNIST from
# Debian's dataset-fashion-mnist), then:
#   ./setup.sh demo [ARGS]   run the main job on the emulated chip (pcm-hil store)
#   ./setup.sh test [ARGS]   run the test suite
#   ./setup.sh install       install only
set -euo pipefail
cd "$(dirname "$0")"
venv=${PCM_HIL_VENV:-.venv}
py=${PYTHON:-python3}
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first, pinned, so that a later torch>=... requirement never pulls a CUDA build
"$venv/bin/python" -c 'import torch' 2>/dev/null || "${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"
mode=${1:-install}
shift || true
case "$mode" in
  demo) exec "$venv/bin/pcm-hil" store "$@" ;;
  test) exec "$venv/bin/python" -m pytest -q "$@" ;;
  install) echo "pcm-hil installed in $venv: activate with 'source $venv/bin/activate'" ;;
  *) echo "usage: ./setup.sh demo|test|install [ARGS]" >&2; exit 2 ;;
esac
