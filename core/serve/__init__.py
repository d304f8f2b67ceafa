"""``aromni serve``: models stay loaded behind an OpenAI-compatible HTTP API (docs/server.md).

config (options and limits), batcher (one decoding thread per model, requests' rows merged), registry (models
loaded on first use, unloaded when idle), runner (request threads, queue), metrics, wire (what travels over
HTTP: decoding options, audio), app (the FastAPI routes; needs the ``serve`` extra).
"""
