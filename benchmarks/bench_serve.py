"""aromni serve against one process per call, on the bundled model.

1. The README pipeline (tts | asr | t2i, then caption of the PNG) with $AROMNI_HOST set vs unset: wall-time
   ratio, runs interleaved (local, remote, local, remote, ...).
2. 16 TTS requests at once through the server vs the same 16 as sequential `aromni tts` processes:
   throughput ratio (sequential wall / concurrent wall).

    python benchmarks/bench_serve.py [--runs 2] [--n 16]

The server is started once on a free port and warmed up by one request (its start-up is not counted).
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AROMNI = [sys.executable, "-m", "aromni"]
TEXTS = ["A red circle on a blue background.", "The cat sat on the mat.", "Good morning to you.",
         "Two green squares.", "Hello there, how are you?", "It is a sunny day.", "Please open the door.",
         "One two three four.", "A yellow triangle.", "The dog runs fast.", "I like warm tea.",
         "See you tomorrow.", "Read me a story.", "The sky is blue.", "A small white house.", "Thank you very much."]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sh(cmd: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    base = dict(os.environ, AROMNI_HOST="", AROMNI_MODEL="")
    srv = subprocess.Popen(AROMNI + ["serve", "--port", str(port)], env=base, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        httpx.post(url + "/v1/audio/speech", json={"input": "warm up"}, timeout=600)
        tmp = tempfile.mkdtemp()
        png = os.path.join(tmp, "p.png")
        pipe = (f"{' '.join(AROMNI)} tts --seed 1 'a red circle on a blue background' | {' '.join(AROMNI)} asr "
                f"--seed 1 | {' '.join(AROMNI)} t2i --seed 1 > {png} && {' '.join(AROMNI)} caption --seed 1 {png}")
        local, remote = [], []
        for _ in range(a.runs):
            local.append(sh(pipe + " > /dev/null", base))
            remote.append(sh(pipe + " > /dev/null", dict(base, AROMNI_HOST=url)))
        texts = (TEXTS * ((a.n + len(TEXTS) - 1) // len(TEXTS)))[: a.n]
        t0 = time.perf_counter()
        for i, t in enumerate(texts):
            subprocess.run(AROMNI + ["tts", "-q", "--seed", str(i), t, "-o", os.path.join(tmp, f"s{i}.wav")],
                           check=True, env=base, cwd=ROOT)
        seq = time.perf_counter() - t0
        errors: list = []

        def one(i: int, t: str) -> None:
            r = httpx.post(url + "/v1/audio/speech", json={"input": t, "seed": i}, timeout=600)
            if r.status_code != 200:
                errors.append(r.status_code)

        th = [threading.Thread(target=one, args=(i, t)) for i, t in enumerate(texts)]
        t0 = time.perf_counter()
        for x in th:
            x.start()
        for x in th:
            x.join()
        conc = time.perf_counter() - t0
        biggest = [ln.split()[1] for ln in httpx.get(url + "/metrics").text.splitlines()
                   if ln.startswith("aromni_batched_rows_max ")]
    finally:
        srv.terminate()
        srv.wait(timeout=120)
    ml, mr = sum(local) / len(local), sum(remote) / len(remote)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores visible), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"pipeline tts|asr|t2i + caption, {a.runs} interleaved pairs: in-process {ml:.1f}s, "
          f"via server {mr:.1f}s, ratio {ml / mr:.2f}x  (runs: {[round(x, 1) for x in local]} vs "
          f"{[round(x, 1) for x in remote]})")
    print(f"{a.n} TTS: sequential processes {seq:.1f}s, concurrent via server {conc:.1f}s, throughput ratio "
          f"{seq / conc:.2f}x, errors {len(errors)}, largest batch {biggest[0] if biggest else '?'} rows")


if __name__ == "__main__":
    main()
