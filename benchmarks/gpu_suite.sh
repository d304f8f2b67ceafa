#!/usr/bin/env bash
# Serving numbers of a 7B-shaped model with random weights on one GPU, in bf16, int8 and int4: decode tok/s at
# batch 1 and 8, first-token latency, streaming TTS real-time factor, T2I (1024 codes, 3-stream CFG) and peak
# memory, as one table (benchmarks/gpu_suite.py says what each column measures). About 3-5 min on one H100;
# stopped after 8 min. Arguments go to gpu_suite.py, e.g. --tiny (test-size model on CPU) or --formats bf16 int4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# /'
fi
exec timeout "${GPU_SUITE_TIMEOUT:-480}" "$PY" benchmarks/gpu_suite.py "$@"
