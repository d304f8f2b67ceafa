"""`aromni serve`: keep models loaded behind an OpenAI-compatible HTTP API."""
from __future__ import annotations

import os
import signal
from typing import List, Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Device, Dtype, Threads, log
from aromni.core.errors import AromniError, NotAvailableError


def run(
    model: Annotated[Optional[List[str]], typer.Option(
        "--model", "-m", show_default=False,
        help="Model directory, checkpoint or hub id to serve, loaded at start (repeat for several; the first is "
             "also called 'default'). Default: $AROMNI_MODEL, else the bundled model, loaded on first use.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs --api-key.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 8180,
    keep_alive: Annotated[str, typer.Option(
        "--keep-alive", help="Unload a model after this long without requests (30s, 10m, 1h; 0: at once; "
                             "-1: never).")] = "10m",
    max_batch: Annotated[int, typer.Option(
        "--max-batch", help="Requests served at once; their decoding rows share one batch.")] = 16,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="Requests that may wait for a slot; more are answered 503 with Retry-After.")] = 64,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="AROMNI_API_KEY", show_default=False,
        help="Require 'Authorization: Bearer KEY' on every request but /health. Default: $AROMNI_API_KEY.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a request may run.")] = 600.0,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body, MB (413 above).")
                           ] = 50.0,
    max_audio_s: Annotated[float, typer.Option("--max-audio-s", help="Longest uploaded audio, seconds (413 "
                                                                     "above).")] = 600.0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    compile: Annotated[bool, typer.Option(
        "--compile", help="Static KV cache + torch.compile'd decode step for every request (slow warm-up).")
                       ] = False,
    threads: Threads = None,
) -> None:
    """Serve models over HTTP: OpenAI-compatible /v1/audio/speech, /v1/audio/transcriptions,
    /v1/images/generations and /v1/chat/completions, aromni's /v1/aromni/generate and /v1/aromni/caption, and
    /health, /v1/models, /metrics (Prometheus). Models stay loaded between requests; requests that arrive while
    others decode are batched together, each row with its own seed (same output alone or batched). One log line
    per request on stderr; SIGINT/SIGTERM finish running requests and stop.

    The commands tts, asr, caption, t2i, chat and generate send their work to a running server when
    $AROMNI_HOST (or their --host) is set, and write what they would have written in-process.

    \b
    Examples:
      aromni serve &
      AROMNI_HOST=http://127.0.0.1:8180 aromni tts "Hello." > hello.wav
      curl -s localhost:8180/v1/audio/speech -H 'Content-Type: application/json' \\
           -d '{"input": "Hello there."}' > hello.wav
    """
    try:
        import uvicorn

        from aromni.core.serve.app import create_app
    except ImportError as e:
        raise NotAvailableError(f"'aromni serve' needs the serve extra (pip install 'aromni[serve]'): {e}") from None
    from aromni.core.device import default_threads
    from aromni.core.serve.config import Limits, ServeConfig, parse_duration

    if max_body_mb <= 0 or max_audio_s <= 0 or timeout <= 0:
        raise AromniError("--max-body-mb, --max-audio-s and --timeout must be > 0")
    models = tuple(model or ([os.environ["AROMNI_MODEL"]] if os.environ.get("AROMNI_MODEL") else []))
    cfg = ServeConfig(models=models, host=host, port=port, keep_alive_s=parse_duration(keep_alive),
                      max_batch=max_batch, max_queue=max_queue, api_key=api_key or None, device=device, dtype=dtype,
                      compile=compile, limits=Limits(body_bytes=int(max_body_mb * 1024 * 1024), audio_s=max_audio_s,
                                                     timeout_s=timeout)).check()
    default_threads()
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=30))
    log(f"aromni serve: listening on http://{host}:{port} (models: {', '.join(models) or 'bundled, on first use'})")
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the handlers it replaced:
    # that second delivery is ignored, a requested stop is a clean exit (0)
    old = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if not server.started:
        raise AromniError(f"could not serve on {host}:{port} (address in use, or the models failed to load)")
    log("aromni serve: stopped")
