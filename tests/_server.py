"""A real ``aromni serve`` in a subprocess on a free loopback port, and the CLI run against it (shared by
test_client.py and test_serve_replicas.py)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {"OMP_NUM_THREADS": "1", "AROMNI_MODEL": "", "AROMNI_HOST": "", "AROMNI_API_KEY": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """A server on a free port of 127.0.0.1 (the bundled model unless ``args`` name one) once it answers."""
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "aromni", "serve", "--port", str(port), *args],
                         env=dict(os.environ, **ENV), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 120:
        if p.poll() is not None:
            raise RuntimeError(f"server exited with {p.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return p, url
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError("server did not start")


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def aromni(*args: str, host: str | None = None, input: bytes | None = None, cwd: str = ROOT,
           python: tuple = ()) -> subprocess.CompletedProcess:
    """``aromni ARGS`` in a subprocess (``python``: interpreter options, e.g. ("-X", "importtime"))."""
    env = dict(os.environ, **ENV)
    if host:
        env["AROMNI_HOST"] = host
    return subprocess.run([sys.executable, *python, "-m", "aromni", *args], input=input, capture_output=True,
                          env=env, cwd=cwd, timeout=300)
