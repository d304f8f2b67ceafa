"""Per-step joining vs batch-level joining in `aromni serve`: N seeded requests arriving staggered.

Two servers run the bundled model side by side: one as shipped (a request's rows join the running batch at its
next step) and one whose decoding thread admits calls only into an idle engine (``Batcher(join="batch")``: the
rows of a call that arrives while a batch decodes wait for that batch to end, calls with equal options merged).
Runs alternate between them (A B, B A, ...); each run sends N requests ``--gap`` seconds apart and times from the
first send to the last answer. Both servers must return the same audio bytes or token ids for the same seed.

``--task tts``: request i speaks a short sentence (the bundled model speaks three words per decode call, so a
request is a few short calls). ``--task text``: request i decodes ``--tokens`` text tokens from a 4-token prompt
through /v1/aromni/generate (one long call; no stop token).

    python benchmarks/bench_serve_join.py [--task tts|text] [--runs 3] [--n 16] [--gap 0.2] [--tokens 200]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

from aromni.core.threads import cpu_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["A red circle on a blue background.", "The cat sat on the mat.", "Good morning to you.",
         "Two green squares.", "Hello there, how are you?", "It is a sunny day.", "Please open the door.",
         "One two three four.", "A yellow triangle.", "The dog runs fast.", "I like warm tea.",
         "See you tomorrow.", "Read me a story.", "The sky is blue.", "A small white house.", "Thank you very much."]
# `aromni serve` with the decoding thread admitting only into an idle engine
BATCH_LEVEL = ("import functools, sys; import aromni.core.serve.registry as r, aromni.core.serve.batcher as b; "
               "r.Batcher = functools.partial(b.Batcher, join='batch'); from aromni.app import main; "
               "main(sys.argv[1:])")


def start(mode: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = [sys.executable, "-c", BATCH_LEVEL] if mode == "batch" else [sys.executable, "-m", "aromni"]
    env = dict(os.environ, AROMNI_HOST="", AROMNI_MODEL="")
    p = subprocess.Popen(head + ["serve", "--port", str(port)], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    httpx.post(url + "/v1/audio/speech", json={"input": "warm up", "seed": 0}, timeout=600)
    return p, url


def request(task: str, i: int, text: str, tokens: int) -> tuple[str, dict]:
    if task == "tts":
        return "/v1/audio/speech", {"input": text, "seed": i, "response_format": "pcm"}
    opts = {"max_new_tokens": tokens, "stop": [], "controls": ["ins", "res"], "images": False, "speech": False}
    return "/v1/aromni/generate", {"sequences": [[0, 5 + i % 50, 6, 7]], "task": "text", "seed": i, "stream": False,
                                   "options": opts}


def burst(url: str, reqs: list[tuple[str, dict]], gap: float) -> tuple[float, list[bytes], float]:
    """Wall seconds from the first send to the last answer, the answers, and the mean batch size."""
    out: list = [None] * len(reqs)

    def one(i: int) -> None:
        r = httpx.post(url + reqs[i][0], json=reqs[i][1], timeout=600)
        if r.status_code != 200:
            out[i] = r.status_code
        else:  # the audio, or the token ids (the answer also holds timings)
            out[i] = r.content if reqs[i][0] == "/v1/audio/speech" else str(r.json()["tokens"]).encode()

    def metric(name: str) -> float:
        for ln in httpx.get(url + "/metrics").text.splitlines():
            if ln.startswith(name + " "):
                return float(ln.split()[1])
        return 0.0

    b0, r0 = metric("aromni_batches_total"), metric("aromni_batched_rows_total")
    th = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    t0 = time.perf_counter()
    for i, t in enumerate(th):
        time.sleep(max(0.0, t0 + i * gap - time.perf_counter()))
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    steps, rows = metric("aromni_batches_total") - b0, metric("aromni_batched_rows_total") - r0
    return wall, out, rows / steps if steps else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--gap", type=float, default=0.2)
    ap.add_argument("--task", choices=("tts", "text"), default="tts")
    ap.add_argument("--tokens", type=int, default=200)
    a = ap.parse_args()
    texts = (TEXTS * ((a.n + len(TEXTS) - 1) // len(TEXTS)))[: a.n]
    reqs = [request(a.task, i, t, a.tokens) for i, t in enumerate(texts)]
    servers = {m: start(m) for m in ("step", "batch")}
    walls: dict = {"step": [], "batch": []}
    rows: dict = {"step": [], "batch": []}
    answers: dict = {}
    try:
        for run in range(a.runs):
            for mode in (("step", "batch") if run % 2 == 0 else ("batch", "step")):
                wall, out, mean_rows = burst(servers[mode][1], reqs, a.gap)
                bad = [x for x in out if not isinstance(x, bytes)]
                if bad:
                    raise SystemExit(f"{mode}: failed requests {bad}")
                walls[mode].append(wall)
                rows[mode].append(mean_rows)
                answers.setdefault(mode, out)
    finally:
        for p, _ in servers.values():
            p.terminate()
            p.wait(timeout=120)
    same = answers["step"] == answers["batch"]
    ratios = [b / s for s, b in zip(walls["step"], walls["batch"])]
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores visible), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    what = "TTS" if a.task == "tts" else f"text ({a.tokens} tokens)"
    print(f"{a.n} seeded {what} requests {a.gap:g}s apart, {a.runs} interleaved pairs; same outputs in both modes: "
          f"{same}")
    for m in ("step", "batch"):
        print(f"  join per {m:5s}: wall {statistics.median(walls[m]):.2f}s median {[round(x, 2) for x in walls[m]]}, "
              f"{a.n / statistics.median(walls[m]):.2f} requests/s, mean rows per step "
              f"{statistics.mean(rows[m]):.1f}")
    print(f"throughput ratio per-step / batch-level: median {statistics.median(ratios):.2f}x "
          f"(pairs: {[round(x, 2) for x in ratios]})")


if __name__ == "__main__":
    main()
