#!/usr/bin/env bash
# Install aromni with its test extras into .venv (CPU torch 2.13.0 first, so no CUDA download) and run
# the whole test suite. This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
# espeak-ng (the synthetic corpus's voices) and real human speech used only for evaluation (Asterisk prompts,
# LibriVox clips from pocketsphinx-testdata)
need=""
command -v espeak-ng >/dev/null 2>&1 || need="$need espeak-ng"
[ -d /usr/share/asterisk/sounds/en_US_f_Allison/digits ] || need="$need asterisk-core-sounds-en-wav"
[ -f /usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz ] || need="$need asterisk-core-sounds-en"
[ -d /usr/share/pocketsphinx/test/data/librivox ] || need="$need pocketsphinx-testdata"
if [ -n "$need" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null) \
    || echo "warning: could not install$need; the tests that need them will skip" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
