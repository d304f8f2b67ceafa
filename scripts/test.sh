#!/usr/bin/env bash
# Install aromni with its test extras into .venv (CPU torch 2.13.0 first, so no CUDA download) and run
# the whole test suite. This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v espeak-ng >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || echo "warning: espeak-ng not installed; corpus tests will skip" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
.venv/bin/python -m pytest -q "$@"
