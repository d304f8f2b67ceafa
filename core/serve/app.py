"""The HTTP API (FastAPI): OpenAI-compatible audio, image and chat endpoints, and aromni's own caption and
token endpoints. Shapes and examples: docs/server.md."""
from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Callable, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import tasks
from ..bundle import Omni
from ..decoding import TASKS
from .batcher import Cancelled
from .config import ServeConfig
from .http import ApiError, Gate, as_api_error, field, parse_json, seed_of
from .metrics import Metrics
from .registry import Entry, Registry
from .runner import Runner
from .wire import b64, options_from_payload, pcm16, png, unb64

AUDIO_FORMATS = ("wav", "pcm", "flac")
TRANSCRIPT_FORMATS = ("text", "json", "verbose_json")
T = TypeVar("T")


class Server:
    """What the routes share: config, models, request threads, counters, the upload temp dir."""

    def __init__(self, cfg: ServeConfig, log=None):
        self.cfg = cfg
        self.metrics = Metrics()
        self.registry = Registry(cfg, log)
        self.runner = Runner(cfg.max_batch, cfg.max_queue)
        self.tmp = tempfile.mkdtemp(prefix="aromni-serve-")
        self.started = time.time()

    def close(self) -> None:
        self.registry.close()
        self.runner.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------------------------------
    async def acquire(self, model) -> Entry:
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", "invalid_type", "model")
        self.registry.resolve(model)  # unknown names fail before anything loads
        return await asyncio.to_thread(self.registry.acquire, model)

    def submit(self, fn, cancel: threading.Event) -> asyncio.Future:
        return self.runner.submit(fn, cancel)

    async def run(self, model, fn: Callable[[Omni], T]) -> T:
        """``fn(omni)`` in a request thread, with the model held and the request timeout."""
        entry = await self.acquire(model)
        omni = entry.omni
        assert omni is not None  # acquired: loaded, and kept until released
        cancel = threading.Event()
        try:
            fut = self.submit(lambda: fn(omni), cancel)
            try:
                return await asyncio.wait_for(asyncio.shield(fut), self.cfg.limits.timeout_s)
            except asyncio.TimeoutError:
                cancel.set()
                raise ApiError(504, f"the request took longer than {self.cfg.limits.timeout_s:g}s", "timeout") from None
            except asyncio.CancelledError:
                cancel.set()
                raise
        finally:
            self.registry.release(entry)

    def options(self, task: str, payload, **fixed):
        lim = self.cfg.limits
        opts = options_from_payload(task, payload, batch_size=self.cfg.max_batch, compile=self.cfg.compile,
                                    **fixed)
        if opts.max_new_tokens > lim.max_tokens and "max_new_tokens" in opts.explicit:
            raise ApiError(400, f"max new tokens must be at most {lim.max_tokens}", "too_many_tokens",
                           "max_tokens")
        if opts.candidates > lim.n:
            raise ApiError(400, f"candidates must be at most {lim.n}", "too_many_candidates", "candidates")
        return opts

    def text(self, body: dict, name: str) -> str:
        t = field(body, name, str, required=True)
        if len(t) > self.cfg.limits.text_chars:
            raise ApiError(400, f"'{name}' is longer than {self.cfg.limits.text_chars} characters", "text_too_long",
                           name)
        if not t.strip():
            raise ApiError(400, f"'{name}' is empty", "empty_input", name)
        return t

    def audio(self, omni, data: bytes, name: str):
        """Uploaded audio bytes -> float samples at the codec's rate (duration limit: 413)."""
        from ..audio_io import load_audio
        if omni.speech is None:
            raise ApiError(400, "this model has no speech tokenizer")
        wav = load_audio(data, omni.speech.sample_rate, source=name, resampler=omni.speech.resampler)
        secs = len(wav) / omni.speech.sample_rate
        if secs > self.cfg.limits.audio_s:
            raise ApiError(413, f"{name}: {secs:.0f}s of audio, more than {self.cfg.limits.audio_s:g}s",
                           "audio_too_long")
        return wav


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


# ----------------------------------------------------------------------------------------------
# streaming from a request thread
# ----------------------------------------------------------------------------------------------
class Stream:
    """Items pushed by a request thread (``put``), read by the response; ends with the job's result."""

    END = object()

    def __init__(self, server: Server, entry: Entry):
        self.server, self.entry = server, entry
        self.loop = asyncio.get_running_loop()
        self.q: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.future: asyncio.Future | None = None
        self.released = False

    def put(self, item) -> None:
        """From the request thread; raises Cancelled once the client is gone."""
        if self.cancel.is_set():
            raise Cancelled()
        self.loop.call_soon_threadsafe(self.q.put_nowait, item)

    def start(self, fn) -> None:
        self.future = self.server.submit(lambda: fn(self.entry.omni), self.cancel)
        self.future.add_done_callback(lambda f: self.q.put_nowait(self.END))

    async def next(self):
        """The next item, or END (then ``result()``)."""
        deadline = self.server.cfg.limits.timeout_s
        try:
            return await asyncio.wait_for(self.q.get(), deadline)
        except asyncio.TimeoutError:
            self.cancel.set()
            raise ApiError(504, f"no progress for {deadline:g}s", "timeout") from None

    def result(self):
        return self.future.result()

    def close(self) -> None:
        if self.future is not None and not self.future.done():
            self.cancel.set()
        if not self.released:
            self.released = True
            self.server.registry.release(self.entry)


async def open_stream(server: Server, model, fn) -> tuple[Stream, object]:
    """Start ``fn(omni, stream)`` and wait for its first item: errors before any output become a normal error
    answer. Returns the stream and its first item (END when the job ended without items)."""
    entry = await server.acquire(model)
    st = Stream(server, entry)
    try:
        st.start(lambda omni: fn(omni, st))
        first = await st.next()
        if first is Stream.END:
            st.result()  # raises the job's error
        return st, first
    except BaseException:
        st.close()
        raise


# ----------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------
def create_app(cfg: ServeConfig, log=None, preload: bool = True) -> Gate:
    """The ASGI app (wrapped in :class:`Gate`: key, body limit, log line). Models named in ``cfg.models`` load at
    start when ``preload``."""
    server = Server(cfg, log)

    @asynccontextmanager
    async def lifespan(app):
        old_tmp = tempfile.tempdir
        tempfile.tempdir = server.tmp  # uploads spooled to disk land here, removed at exit
        if preload:
            await asyncio.to_thread(server.registry.preload)
        try:
            yield
        finally:
            tempfile.tempdir = old_tmp
            await asyncio.to_thread(server.close)

    app = FastAPI(title="aromni", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return Response(e.body(), status_code=e.status, media_type="application/json", headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        err = ApiError(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else None)
        return Response(err.body(), status_code=err.status, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e):
        err = ApiError(400, "invalid request: " + "; ".join(str(x.get("msg")) for x in e.errors())[:500])
        return Response(err.body(), status_code=400, media_type="application/json")

    @app.exception_handler(Exception)
    async def _other(request, e):
        err = as_api_error(e)
        return Response(err.body(), status_code=err.status, media_type="application/json", headers=err.headers)

    async def body_of(request: Request) -> dict:
        ctype = request.headers.get("content-type", "")
        if ctype and "json" not in ctype:
            raise ApiError(415, f"expected a JSON body (Content-Type: application/json), got {ctype}",
                           "unsupported_media_type")
        return parse_json(await request.body())

    # --- service ---------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        loaded = [e.name for e in server.registry.entries.values() if e.omni is not None]
        return {"status": "ok", "models": server.registry.names(), "loaded": loaded}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(e, server) for e in server.registry.entries.values()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        return model_card(server.registry.resolve(name), server)

    @app.get("/metrics")
    async def metrics():
        r = server.runner
        return PlainTextResponse(server.metrics.text(r.waiting, r.active, server.registry.stats()),
                                 media_type="text/plain; version=0.0.4")

    # --- speech ------------------------------------------------------------------------------
    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        body = await body_of(request)
        text = server.text(body, "input")
        fmt = field(body, "response_format", str, "wav")
        if fmt not in AUDIO_FORMATS:
            raise ApiError(400, f"response_format {fmt!r} is not supported (use {', '.join(AUDIO_FORMATS)})",
                           "unsupported_format", "response_format")
        sfmt = field(body, "stream_format", str, "audio")
        if sfmt not in ("audio", "sse"):
            raise ApiError(400, "stream_format must be audio or sse", "invalid_value", "stream_format")
        speed = field(body, "speed", float, 1.0)
        if speed != 1.0:
            raise ApiError(400, "only speed 1.0 is supported", "invalid_value", "speed")
        field(body, "voice", str)
        seed = seed_of(body)
        opts = server.options("tts", body.get("options"))

        def job(omni, st: Stream):
            return tasks.tts(omni, text, opts, on_audio=st.put, seed=seed)

        st, first = await open_stream(server, body.get("model"), job)
        omni = st.entry.omni
        assert omni is not None  # the stream holds the entry
        sr = omni.speech.sample_rate

        async def chunks():
            item = first
            while item is not Stream.END:
                yield item
                item = await st.next()
            st.result()

        headers = {"X-Sample-Rate": str(sr)}
        if fmt == "flac":
            try:
                import numpy as np
                import soundfile as sf
                parts = [c async for c in chunks()]
                buf = io.BytesIO()
                pcm = np.frombuffer(b"".join(pcm16(c) for c in parts), dtype="<i2")  # the samples wav/pcm carry
                sf.write(buf, pcm, sr, format="FLAC", subtype="PCM_16")
                return Response(buf.getvalue(), media_type="audio/flac", headers=headers)
            finally:
                st.close()

        async def audio():
            from ..audio_io import wav_header
            try:
                if sfmt == "sse":
                    yield sse({"type": "speech.audio.start", "sample_rate": sr})
                    async for c in chunks():
                        yield sse({"type": "speech.audio.delta", "audio": b64(pcm16(c))})
                    r = st.result()
                    yield sse({"type": "speech.audio.done", "usage": None,
                               "aromni": {"stats": r.stats, "codes": len(r.codes), "samples": len(r.wav),
                                          "sample_rate": sr}})
                    return
                if fmt == "wav":
                    yield wav_header(None, sr)
                async for c in chunks():
                    yield pcm16(c)
            finally:
                st.close()

        media = "text/event-stream" if sfmt == "sse" else "audio/wav" if fmt == "wav" else "audio/pcm"
        return StreamingResponse(audio(), media_type=media, headers=headers)

    @app.post("/v1/aromni/speech/batch")
    async def speech_batch(request: Request):
        body = await body_of(request)
        inputs = field(body, "inputs", list, required=True)
        lim = server.cfg.limits
        if not inputs or len(inputs) > lim.sequences or not all(isinstance(t, str) for t in inputs):
            raise ApiError(400, f"'inputs' must be 1..{lim.sequences} texts", "invalid_value", "inputs")
        if any(len(t) > lim.text_chars for t in inputs):
            raise ApiError(400, f"an input is longer than {lim.text_chars} characters", "text_too_long", "inputs")
        texts = list(inputs)
        seed = seed_of(body)
        opts = server.options("tts", body.get("options"))

        def job(omni):
            return omni.speech.sample_rate, tasks.tts_batch(omni, texts, opts, seed=seed)

        sr, results = await server.run(body.get("model"), job)
        return {"sample_rate": sr, "items": [{"audio": b64(pcm16(r.wav)), "codes": len(r.codes), "stats": r.stats}
                                             for r in results]}

    # --- transcription ------------------------------------------------------------------------
    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise ApiError(415, "expected multipart/form-data with a 'file' part", "unsupported_media_type")
        try:
            form = await request.form(max_files=64, max_fields=64)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - a malformed multipart body
            raise ApiError(400, f"malformed multipart body ({type(e).__name__})", "invalid_multipart") from None
        try:
            files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
            if not files:
                raise ApiError(400, "'file' is required (an audio file part)", "missing_field", "file")
            data = [(await f.read(), f.filename or "upload") for f in files]
        finally:
            await form.close()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        fmt = fields.get("response_format", "json")
        if fmt not in TRANSCRIPT_FORMATS:
            raise ApiError(400, f"response_format {fmt!r} is not supported (use {', '.join(TRANSCRIPT_FORMATS)})",
                           "unsupported_format", "response_format")
        seed = seed_of({"seed": form_number(fields, "seed", int)})
        window = form_number(fields, "window", float, tasks.ASR_WINDOW_S)
        if window <= 0:
            raise ApiError(400, "window must be > 0", "invalid_value", "window")
        payload = json_field(fields, "options")
        temp = form_number(fields, "temperature", float)
        extra: dict[str, Any] = {}
        if temp is not None:
            extra = {"greedy": True} if temp == 0 else {"temperature": temp}
        opts = server.options("asr", payload, **extra)

        def job(omni):
            wavs = [server.audio(omni, b, name) for b, name in data]
            answers = tasks.asr_answers(omni, wavs, opts, seed=seed, window_s=window)
            return answers, [len(w) / omni.speech.sample_rate for w in wavs]

        answers, secs = await server.run(fields.get("model"), job)
        texts = [a.text for a in answers]
        if fmt == "text":
            return PlainTextResponse("\n".join(texts) + "\n")
        out: dict = {"text": texts[0]}
        if len(texts) > 1:
            out["texts"] = texts
        if fmt == "verbose_json":
            out.update(task="transcribe", language=fields.get("language") or "en", duration=secs[0],
                       segments=[{"id": 0, "start": 0.0, "end": secs[0], "text": texts[0],
                                  "avg_logprob": answers[0].to_dict()["avg_logprob"],
                                  "no_speech_prob": 1.0 if answers[0].no_speech else 0.0}])
        out["aromni"] = {"answers": [a.to_dict() for a in answers]}
        return out

    # --- images -----------------------------------------------------------------------------
    @app.post("/v1/images/generations")
    async def images(request: Request):
        body = await body_of(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(p, str) for p in prompt):
                raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", "invalid_type",
                               "prompt")
            texts = [server.text({"prompt": p}, "prompt") for p in prompt]
        else:
            texts = [server.text(body, "prompt")]
        n = field(body, "n", int, 1)
        if not 1 <= n <= server.cfg.limits.n or len(texts) * n > server.cfg.limits.n * 4:
            raise ApiError(400, f"'n' must be 1..{server.cfg.limits.n}", "invalid_value", "n")
        fmt = field(body, "response_format", str, "b64_json")
        if fmt != "b64_json":
            raise ApiError(400, "only response_format b64_json is supported (no image URLs are hosted)",
                           "unsupported_format", "response_format")
        size = field(body, "size", str, "auto")
        seed = seed_of(body)
        opts = server.options("t2i", body.get("options"))

        def job(omni):
            res = omni.image.resolution if omni.image is not None else None
            if size != "auto" and size != f"{res}x{res}":
                raise ApiError(400, f"size {size!r}: this model makes {res}x{res} images", "invalid_value", "size")
            return [png(im) for im in tasks.t2i(omni, texts, n=n, opts=opts, seed=seed)]

        pngs = await server.run(body.get("model"), job)
        return {"created": int(time.time()), "data": [{"b64_json": b64(p)} for p in pngs]}

    # --- caption (aromni) ----------------------------------------------------------------------
    @app.post("/v1/aromni/caption")
    async def caption(request: Request):
        body = await body_of(request)
        imgs = field(body, "images", list, required=True)
        if not imgs or len(imgs) > server.cfg.limits.sequences or not all(isinstance(x, str) for x in imgs):
            raise ApiError(400, f"'images' must be 1..{server.cfg.limits.sequences} base64 strings",
                           "invalid_value", "images")
        data = [unb64(x, f"images[{i}]") for i, x in enumerate(imgs)]
        instruction = field(body, "instruction", str)
        upright = field(body, "exif_transpose", bool, False)
        seed = seed_of(body)
        opts = server.options("caption", body.get("options"))

        def job(omni):
            from ..image_tokenizer import open_image
            pil = [open_image(b, f"images[{i}]", exif_transpose=upright) for i, b in enumerate(data)]
            if instruction is not None:
                prompts = dict(omni.prompts or {})
                prompts["instructions"] = {**(prompts.get("instructions") or {}), "caption": instruction}
                omni = replace(omni, prompts=prompts)
            return tasks.caption_answers(omni, pil, opts, seed=seed)

        answers = await server.run(body.get("model"), job)
        return {"texts": [a.text for a in answers], "answers": [a.to_dict() for a in answers]}

    @app.post("/v1/aromni/info")
    async def info(request: Request):
        body = await body_of(request)

        def job(omni):
            sp, im = omni.speech, omni.image
            return {"model": body.get("model") or "default", "source": omni.source, "vocab": omni.vocab.to_dict(),
                    "layout": omni.vocab.fingerprint, "sample_rate": sp.sample_rate if sp is not None else None,
                    "image_size": im.resolution if im is not None else None,
                    "context": omni.model.cfg.max_seq_len}

        return await server.run(body.get("model"), job)

    @app.post("/v1/aromni/prompt")
    async def prompt(request: Request):
        body = await body_of(request)
        ids = field(body, "ids", list, required=True)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ApiError(400, "'ids' must be a list of integer token ids", "invalid_type", "ids")
        task = field(body, "task", str, "chat")
        compat = field(body, "compat", bool, False)
        source = field(body, "source", str, "request")

        def job(omni):
            from ..prompts import PromptContext, task_prompt
            if omni.text is None:
                raise ApiError(400, f"{omni.source or 'model'}: has no text tokenizer to build a {task} prompt")
            p, opened = task_prompt(PromptContext.of(omni), task, ids, compat, source)
            return {"prompt": list(p), "opened": list(opened)}

        return await server.run(body.get("model"), job)

    # --- tokens (aromni) -------------------------------------------------------------------
    @app.post("/v1/aromni/generate")
    async def generate(request: Request):
        body = await body_of(request)
        seqs = field(body, "sequences", list, required=True)
        lim = server.cfg.limits
        if not 1 <= len(seqs) <= lim.sequences:
            raise ApiError(400, f"'sequences' must hold 1..{lim.sequences} token lists", "invalid_value", "sequences")
        for s in seqs:
            if not isinstance(s, list) or not s or not all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in s):
                raise ApiError(400, "each sequence must be a non-empty list of integer token ids", "invalid_type",
                               "sequences")
        task = field(body, "task", str, "chat")
        if task not in TASKS:
            raise ApiError(400, f"unknown task {task!r} (known: {', '.join(TASKS)})", "invalid_value", "task")
        layout = field(body, "layout", str)
        stream = field(body, "stream", bool, True)
        seed = seed_of(body)
        seeds = field(body, "seeds", list)
        if seeds is not None and (len(seeds) != len(seqs) or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62 for x in seeds)):
            raise ApiError(400, "'seeds' must hold one integer in [0, 2^62) per sequence", "invalid_value", "seeds")
        opts0 = server.options(task, body.get("options"))

        def job(omni, st: Stream | None):
            from ..decoding import with_model_defaults
            omni.vocab.check_compatible(layout, "request")
            opts = with_model_defaults(opts0, omni.decode)
            s0 = tasks.base_seed(seed)
            row_seeds = seeds if seeds is not None else [s0 + k for k in range(len(seqs))]
            on_token = (lambda b, t: st.put({"row": b, "token": t})) if st else None
            on_finish = (lambda b: st.put({"row": b, "end": True})) if st else None
            g = tasks.engine(omni)(omni.model, omni.vocab, seqs, opts, seeds=row_seeds,
                                   on_token=on_token, on_finish=on_finish)
            return {"tokens": g.tokens, "finish": g.finish, "new_tokens": g.new_tokens,
                    "seconds": g.prefill_s + g.decode_s, "tokens_per_s": g.tokens_per_s}

        if not stream:
            return await server.run(body.get("model"), lambda omni: job(omni, None))
        st, first = await open_stream(server, body.get("model"), job)

        async def lines():
            try:
                item = first
                while item is not Stream.END:
                    yield (json.dumps(item) + "\n").encode()
                    item = await st.next()
                res = st.result()
                yield (json.dumps({"done": True, **res}) + "\n").encode()
            finally:
                st.close()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # --- chat -------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        from .chat import chat_job, parse_chat
        body = await body_of(request)
        req = parse_chat(body, server)
        if not req.stream:
            reply = await server.run(body.get("model"), lambda omni: chat_job(omni, req, None))
            return req.completion(reply)
        st, first = await open_stream(server, body.get("model"), lambda omni, st: chat_job(omni, req, st))

        async def events():
            try:
                yield sse(req.chunk({"role": "assistant", "content": ""}))
                item = first
                while item is not Stream.END:
                    if item:
                        yield sse(req.chunk({"content": item}))
                    item = await st.next()
                for c in req.final_chunks(st.result()):
                    yield sse(c)
                yield sse(b"[DONE]")
            finally:
                st.close()

        return StreamingResponse(events(), media_type="text/event-stream")

    return Gate(app, cfg.api_key, cfg.limits.body_bytes, server.metrics, log)


def model_card(e: Entry, server: Server) -> dict:
    return {"id": e.name, "object": "model", "created": int(e.loaded_at or server.started), "owned_by": "aromni",
            "loaded": e.omni is not None, "source": e.spec or "bundled"}


def form_number(fields: dict, name: str, kind: type, default=None):
    v = fields.get(name)
    if v is None or v == "":
        return default
    try:
        return kind(v)
    except ValueError:
        raise ApiError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}", "invalid_type",
                       name) from None


def json_field(fields: dict, name: str):
    v = fields.get(name)
    if not v:
        return None
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        raise ApiError(400, f"'{name}' must be a JSON object", "invalid_json", name) from None

