"""aromni serve against one process per call, on the bundled model, and a load test.

1. Start-up: `aromni tts --seed 1 hello -o x.wav` with --host (a warm server) vs in-process, wall time of the
   whole command, runs interleaved (local, remote, local, ...); and the same request sent from this process
   (the server's share of the remote command's time).
2. The README pipeline (tts | asr | t2i, then caption of the PNG) with $AROMNI_HOST set vs unset: wall-time
   ratio, runs interleaved.
3. 16 TTS requests at once through the server vs the same 16 as sequential `aromni tts` processes:
   throughput ratio (sequential wall / concurrent wall).
4. Load test: --load mixed requests (tts, asr, t2i, caption, chat in turn, seeded) from --clients concurrent
   clients on 127.0.0.1: errors, p50/p99 latency per kind, and the server's RSS after the first 50 and after
   all requests (a fixed number of requests: it ends by itself).
5. With --big-model: a 7B-layout bundle of random bf16 weights (--big-layers of the 7B's 32 blocks; written to
   --big-dir, removed after): `aromni serve -m BUNDLE --dtype bf16` time to ready (model loaded, /health
   answers) and the server's RSS then (weights memory-mapped, not read).

    python benchmarks/bench_serve.py [--runs 2] [--n 16] [--load 500] [--clients 16] [--startup-pairs 5]
    python benchmarks/bench_serve.py --only big --big-model [--big-layers 32] [--big-dir /tmp]

The bundled-model server is started once on a free port and warmed up by one request of each kind (its
start-up is not counted in 1-4).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from aromni.core.threads import cpu_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
AROMNI = [sys.executable, "-m", "aromni"]
TEXTS = ["A red circle on a blue background.", "The cat sat on the mat.", "Good morning to you.",
         "Two green squares.", "Hello there, how are you?", "It is a sunny day.", "Please open the door.",
         "One two three four.", "A yellow triangle.", "The dog runs fast.", "I like warm tea.",
         "See you tomorrow.", "Read me a story.", "The sky is blue.", "A small white house.", "Thank you very much."]
KINDS = ("tts", "asr", "t2i", "caption", "chat")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start(args: list[str], env: dict, limit_s: float = 600.0) -> tuple[subprocess.Popen, str, float]:
    """``aromni serve ARGS`` on a free port: (process, url, seconds until /health answered)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    srv = subprocess.Popen(AROMNI + ["serve", "--port", str(port), *args], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while time.perf_counter() - t0 < limit_s:
        if srv.poll() is not None:
            raise RuntimeError(f"aromni serve exited with {srv.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return srv, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    srv.kill()
    raise RuntimeError("aromni serve did not answer in time")


def stop(srv: subprocess.Popen) -> None:
    srv.terminate()
    try:
        srv.wait(timeout=120)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.wait()


def sh(cmd: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def speech(client, text: str, seed: int) -> bytes:
    chunks: list[bytes] = []
    client.tts(text, {}, seed, on_start=lambda sr: None, on_audio=chunks.append)
    return b"".join(chunks)


# ----------------------------------------------------------------------------------------------
def startup(url: str, base: dict, pairs: int, tmp: str) -> None:
    from aromni.core.client import Client

    cmd = AROMNI + ["tts", "-q", "--seed", "1", "hello", "-o", os.path.join(tmp, "x.wav")]
    local, remote, direct = [], [], []
    for _ in range(pairs):
        for env, out in ((base, local), (dict(base, AROMNI_HOST=url), remote)):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=ROOT)
            out.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        speech(Client(url), "hello", 1)
        direct.append(time.perf_counter() - t0)
    ml, mr, md = (sorted(x)[len(x) // 2] for x in (local, remote, direct))
    print(f"start-up `aromni tts --seed 1 hello -o x.wav`, {pairs} interleaved pairs, median: in-process "
          f"{ml:.2f}s, --host {mr:.2f}s, ratio {ml / mr:.2f}x; the same request from this process {md:.2f}s "
          f"(command overhead {mr - md:.2f}s)  (runs: {[round(x, 2) for x in local]} vs "
          f"{[round(x, 2) for x in remote]})", flush=True)


def pipeline(url: str, base: dict, runs: int, tmp: str) -> None:
    png = os.path.join(tmp, "p.png")
    a = " ".join(AROMNI)
    pipe = (f"{a} tts --seed 1 'a red circle on a blue background' | {a} asr --seed 1 | {a} t2i --seed 1 > {png} "
            f"&& {a} caption --seed 1 {png}")
    local, remote = [], []
    for _ in range(runs):
        local.append(sh(pipe + " > /dev/null", base))
        remote.append(sh(pipe + " > /dev/null", dict(base, AROMNI_HOST=url)))
    ml, mr = sum(local) / len(local), sum(remote) / len(remote)
    print(f"pipeline tts|asr|t2i + caption, {runs} interleaved pairs: in-process {ml:.2f}s, via server {mr:.2f}s, "
          f"ratio {ml / mr:.2f}x  (runs: {[round(x, 2) for x in local]} vs {[round(x, 2) for x in remote]})",
          flush=True)


def concurrent_tts(url: str, base: dict, n: int, tmp: str) -> None:
    from aromni.core.client import Client

    texts = (TEXTS * ((n + len(TEXTS) - 1) // len(TEXTS)))[:n]
    t0 = time.perf_counter()
    for i, t in enumerate(texts):
        subprocess.run(AROMNI + ["tts", "-q", "--seed", str(i), t, "-o", os.path.join(tmp, f"s{i}.wav")],
                       check=True, env=base, cwd=ROOT)
    seq = time.perf_counter() - t0
    errors: list = []

    def one(i: int, t: str) -> None:
        try:
            speech(Client(url), t, i)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(e)

    th = [threading.Thread(target=one, args=(i, t)) for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    for x in th:
        x.start()
    for x in th:
        x.join()
    conc = time.perf_counter() - t0
    with urllib.request.urlopen(url + "/metrics") as r:
        biggest = [ln.split()[1] for ln in r.read().decode().splitlines() if ln.startswith("aromni_batched_rows_max ")]
    print(f"{n} TTS: sequential processes {seq:.1f}s, concurrent via server {conc:.1f}s, throughput ratio "
          f"{seq / conc:.2f}x, errors {len(errors)}, largest batch {biggest[0] if biggest else '?'} rows", flush=True)


def load_test(url: str, pid: int, total: int, clients: int) -> None:
    """``total`` requests, kinds in turn, from ``clients`` threads; RSS after the first 50 and after all."""
    from aromni.core.client import Client
    from aromni.core.remote_chat import RemoteChat
    from aromni.core.wav_stream import wav_header

    c = Client(url)
    sr = c.info()["sample_rate"]
    clip = speech(c, "a red circle", 7)
    wav = wav_header(len(clip) // 2, sr) + clip
    png = c.t2i(["a red circle"], 1, {}, 7)[0]

    def request(i: int) -> None:
        kind, text = KINDS[i % len(KINDS)], TEXTS[i % len(TEXTS)]
        if kind == "tts":
            speech(c, text, i)
        elif kind == "asr":
            c.asr([(wav, "clip.wav")], {}, i, 20.0)
        elif kind == "t2i":
            c.t2i([text], 1, {}, i)
        elif kind == "caption":
            c.caption([(png, "p.png")], {}, i)
        else:
            RemoteChat(c, {}, i).say(text)

    for i in range(len(KINDS)):  # warm-up: one of each kind
        request(i)
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: list[str] = []
    lock = threading.Lock()

    def run(lo: int, hi: int) -> float:
        todo = iter(range(lo, hi))

        def worker() -> None:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    request(i)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(f"{KINDS[i % len(KINDS)]}: {e}")
                    continue
                with lock:
                    lat[KINDS[i % len(KINDS)]].append(time.perf_counter() - t0)

        th = [threading.Thread(target=worker) for _ in range(clients)]
        t0 = time.perf_counter()
        for x in th:
            x.start()
        for x in th:
            x.join()
        return time.perf_counter() - t0

    first = min(50, total)
    wall = run(0, first)
    rss50 = rss_mb(pid)
    wall += run(first, total)
    rss_all = rss_mb(pid)
    print(f"load test: {total} requests ({', '.join(KINDS)} in turn) from {clients} clients in {wall:.1f}s "
          f"({total / wall:.2f} req/s), errors {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    for k in KINDS:
        if lat[k]:
            print(f"  {k:8s} n={len(lat[k]):3d}  p50 {pct(lat[k], 50):6.2f}s  p99 {pct(lat[k], 99):6.2f}s")
    print(f"  server RSS after {first} requests {rss50:.0f} MB, after {total} {rss_all:.0f} MB "
          f"(growth {100 * (rss_all / rss50 - 1):+.1f}%)", flush=True)


def big_model(base: dict, layers: int, where: str) -> None:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_load import make_checkpoints
    import torch

    root = tempfile.mkdtemp(prefix="aromni-bench-serve-7b-", dir=where)
    try:
        t0 = time.perf_counter()
        bundle = make_checkpoints(root, layers, torch.bfloat16, ["bundle"])["bundle"]
        size = sum(os.path.getsize(os.path.join(bundle, f)) for f in os.listdir(bundle))
        print(f"7B layout, {layers} of 32 blocks, random bf16: {size / 1e9:.1f} GB written in "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        srv, url, ready = start(["-m", bundle, "--dtype", "bf16", "--device", "cpu"], base, limit_s=1800)
        try:
            rss = rss_mb(srv.pid)
        finally:
            stop(srv)
        print(f"aromni serve -m BUNDLE --dtype bf16: ready (model loaded, /health answers) in {ready:.1f}s, "
              f"server RSS {rss:.0f} MB ({100 * rss * 2**20 / size:.1f}% of the weights' size: they are mapped, "
              "not read)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2, help="pipeline pairs")
    ap.add_argument("--n", type=int, default=16, help="concurrent TTS requests")
    ap.add_argument("--startup-pairs", type=int, default=5)
    ap.add_argument("--load", type=int, default=500, help="load-test requests")
    ap.add_argument("--clients", type=int, default=16, help="load-test concurrent clients")
    ap.add_argument("--only", nargs="*", choices=("startup", "pipeline", "tts", "load", "big"),
                    help="run only these parts")
    ap.add_argument("--big-model", action="store_true", help="also measure a 7B-layout bundle's start-up")
    ap.add_argument("--big-layers", type=int, default=32, help="blocks of the 7B layout (32: the full model)")
    ap.add_argument("--big-dir", default=None, help="where to write the 7B-layout bundle (default: temp dir)")
    a = ap.parse_args()
    parts = set(a.only or ("startup", "pipeline", "tts", "load") + (("big",) if a.big_model else ()))
    base = dict(os.environ, AROMNI_HOST="", AROMNI_MODEL="")
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores visible), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
          flush=True)
    if parts - {"big"}:
        srv, url, _ = start([], base)
        tmp = tempfile.mkdtemp()
        try:
            from aromni.core.client import Client
            speech(Client(url), "warm up", 0)
            if "startup" in parts:
                startup(url, base, a.startup_pairs, tmp)
            if "pipeline" in parts:
                pipeline(url, base, a.runs, tmp)
            if "tts" in parts:
                concurrent_tts(url, base, a.n, tmp)
            if "load" in parts:
                load_test(url, srv.pid, a.load, a.clients)
        finally:
            stop(srv)
            shutil.rmtree(tmp, ignore_errors=True)
    if "big" in parts:
        big_model(base, a.big_layers, a.big_dir or tempfile.gettempdir())


if __name__ == "__main__":
    main()
