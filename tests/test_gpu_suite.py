"""benchmarks/gpu_suite.sh runs end to end on the test-size model (CPU) and prints its one table."""
from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_suite_tiny_prints_the_table():
    env = dict(os.environ, PYTHON=os.path.join(os.path.dirname(os.sys.executable), "python"), OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--tiny"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:3] == ["format", "weights GB", "decode tok/s b1"] and "T2I s" in head and "peak GB" in head
    rows = {c[0]: c for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in lines[2:])}
    assert set(rows) == {"fp32", "int8"}
    for cells in rows.values():
        assert not any(c.startswith("error") for c in cells), cells
        values = dict(zip(head, cells))
        assert float(values["decode tok/s b1"]) > 0 and float(values["TTS RTF"]) > 0, values
    assert float(dict(zip(head, rows["int8"]))["weights GB"]) < float(dict(zip(head, rows["fp32"]))["weights GB"])
