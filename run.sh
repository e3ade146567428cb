#!/usr/bin/env bash
# One entry point for users and CI.
#   bash run.sh demo   create .venv (first time), then run the built-in demo
#   bash run.sh test   create .venv (first time), then run the test suite
#   bash run.sh bench  create .venv (first time), then benchmarks/suite.py
#                      (training, evaluation, serving, start-up)
# Extra arguments after the command are passed on (to the demo script or pytest).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv

ensure_venv() {
  local stamp="$VENV/.requirements.sha1"
  local want
  want=$(cat requirements.txt requirements-dev.txt | sha1sum | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[run.sh] creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[run.sh] installing requirements into $VENV (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements-dev.txt
    echo "$want" > "$stamp"
  fi
}

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cmd="${1:-demo}"
shift || true
case "$cmd" in
  demo)
    ensure_venv
    exec "$VENV/bin/python" demo.py "$@"
    ;;
  test)
    ensure_venv
    # One worker per core (pytest-xdist): graph building and process start-up
    # are single-threaded, so two workers keep both cores busy. -n 0: one.
    exec "$VENV/bin/python" -m pytest -q -n auto --durations=15 tests "$@"
    ;;
  bench)
    ensure_venv
    exec "$VENV/bin/python" -m benchmarks.suite "$@"
    ;;
  *)
    echo "usage: bash run.sh demo|test|bench [args...]" >&2
    exit 2
    ;;
esac
