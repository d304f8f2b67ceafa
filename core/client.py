"""Talk to a running ``aromni serve`` (``$AROMNI_HOST``): the commands send their work here instead of loading
a model, and get back exactly what they would have made in-process (same options, same seeds, lossless
transfer: PCM16 audio, PNG images, token ids).

This module and what it imports are the standard library and aromni's error and option checks only (no torch,
numpy or HTTP package): a command that sends its work to a server starts in the time Python and the CLI take.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import urlsplit

from .checks import RANGES, check_number
from .confidence import Answer
from .errors import AromniError

HOST_ENV = "AROMNI_HOST"
KEY_ENV = "AROMNI_API_KEY"
# decoding options the server sets itself (how it batches and compiles); the rest travel as given
SERVER_OWNED = ("batch_size", "compile")


class ServerError(AromniError):
    """The server answered, and refused this request (``status``): bad input, a limit, a timeout."""

    def __init__(self, message: str, status: int):
        self.status = status
        super().__init__(message)


def host_from(host: str | None, local: bool = False) -> str | None:
    """The server to use: ``host``, else ``$AROMNI_HOST``; None when ``local`` or neither is set."""
    if local:
        return None
    h = (host or os.environ.get(HOST_ENV) or "").strip()
    if not h:
        return None
    return h if "://" in h else "http://" + h


def request_options(given: dict, compat: bool = False) -> dict:
    """The decoding options a command was given (name -> value, None = not given) as the request's ``options``
    object, checked as in-process. The server rebuilds the same options from it (task defaults, then the
    model's own defaults where nothing was given, then these)."""
    out = {}
    for k, v in given.items():
        if v is None:
            continue
        if k in RANGES:
            check_number(k, v)
        if k not in SERVER_OWNED:
            out[k] = v
    if compat:
        out["compat"] = True
    return out


def fresh_seed() -> int:
    """A random base seed, as in-process decoding draws one when none is given."""
    return random.SystemRandom().randrange(2**62)


@dataclass
class Generated:
    """The server's answer to ``generate``: ids per row (prompt excluded) and timings."""

    tokens: list[list[int]]
    finish: list[str]
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else 0.0


class Client:
    """One server. Every method raises AromniError with one line: unreachable server, the server's own error
    message (:class:`ServerError`), or an answer cut off before its end. Each request opens its own connection,
    so one client may be used from several threads."""

    def __init__(self, host: str, model: str | None = None, api_key: str | None = None, timeout: float = 3600.0):
        try:
            u = urlsplit(host)
            ok = u.scheme in ("http", "https") and bool(u.hostname) and (u.port is None or u.port > 0)
        except ValueError:  # a malformed address or port
            ok = False
        if not ok:
            raise AromniError(f"{host}: not a server URL (e.g. http://127.0.0.1:8180)")
        self.host, self.model, self.timeout = host.rstrip("/"), model, timeout
        self._scheme, self._netloc, self._base = u.scheme, u.netloc, u.path.rstrip("/")
        key = api_key or os.environ.get(KEY_ENV)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    # ------------------------------------------------------------------------------------------
    def _unreachable(self) -> AromniError:
        return AromniError(f"cannot reach the aromni server at {self.host} ({HOST_ENV}); start it with "
                           "'aromni serve', or run in-process with --local")

    def _broken(self, e: BaseException) -> AromniError:
        if isinstance(e, TimeoutError):
            return AromniError(f"the aromni server at {self.host} did not answer in time")
        return AromniError(f"the aromni server at {self.host} broke off its answer ({type(e).__name__})")

    def _open(self, path: str, body: bytes, content_type: str) -> tuple[http.client.HTTPConnection,
                                                                          http.client.HTTPResponse]:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._netloc, timeout=10.0)
        try:
            conn.connect()
        except OSError:
            conn.close()
            raise self._unreachable() from None
        conn.sock.settimeout(self.timeout)
        try:
            conn.request("POST", self._base + path, body=body,
                         headers={"Content-Type": content_type, **self._headers})
            r = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self._broken(e) from None
        if r.status >= 400:
            try:
                msg = json.loads(r.read())["error"]["message"]
            except Exception:  # noqa: BLE001 - not our error shape (a proxy, another server)
                msg = f"HTTP {r.status} {r.reason}".strip()
            finally:
                conn.close()
            raise ServerError(f"server: {msg}", r.status)
        return conn, r

    def _post(self, path: str, body: dict | None = None, data: bytes | None = None,
              content_type: str = "application/json") -> dict:
        payload = data if data is not None else json.dumps(body).encode()
        conn, r = self._open(path, payload, content_type)
        try:
            return json.loads(r.read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self._broken(e) from None
        finally:
            conn.close()

    def _lines(self, path: str, body: dict) -> Iterator[bytes]:
        """The answer's lines as they arrive (without their line ends)."""
        conn, r = self._open(path, json.dumps(body).encode(), "application/json")
        try:
            while True:
                try:
                    line = r.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise self._broken(e) from None
                if not line:
                    return
                yield line.rstrip(b"\r\n")
        finally:
            conn.close()

    def _body(self, options: dict | None, seed: int | None, **kw) -> dict:
        body = {k: v for k, v in kw.items() if v is not None}
        if self.model:
            body["model"] = self.model
        if seed is not None:
            body["seed"] = int(seed)
        if options:
            body["options"] = options
        return body

    def _cut_off(self) -> AromniError:
        return AromniError(f"the aromni server at {self.host} broke off its answer")

    # ------------------------------------------------------------------------------------------
    def info(self) -> dict:
        """The model's vocabulary layout and rates (loads it on the server)."""
        return self._post("/v1/aromni/info", self._body(None, None))

    def vocab(self):
        """The server model's :class:`~aromni.core.vocab.VocabLayout`."""
        from .vocab import VocabLayout

        return VocabLayout.from_dict(self.info()["vocab"])

    def task_prompt(self, task: str, ids: list[int], compat: bool, source: str) -> tuple[list[int], list[int]]:
        """prompts.task_prompt with the server model's template: (prompt, opened)."""
        out = self._post("/v1/aromni/prompt", self._body(None, None, task=task, ids=ids, compat=compat,
                                                         source=source))
        return out["prompt"], out["opened"]

    def tts(self, text: str, options: dict, seed: int | None,
            on_start: Callable[[int], None], on_audio: Callable[[bytes], None]) -> dict:
        """Speech streamed as the server makes it: ``on_start(sample_rate)`` once, then ``on_audio(pcm16)``
        per chunk (s16le mono bytes); returns the server's stats."""
        body = self._body(options, seed, input=text, response_format="pcm", stream_format="sse")
        done = None
        for line in self._lines("/v1/audio/speech", body):
            if not line.startswith(b"data: "):
                continue
            ev = json.loads(line[6:])
            if ev.get("type") == "speech.audio.start":
                on_start(int(ev["sample_rate"]))
            elif ev.get("type") == "speech.audio.delta":
                on_audio(base64.b64decode(ev["audio"]))
            elif ev.get("type") == "speech.audio.done":
                done = ev
        if done is None:
            raise self._cut_off()
        return done.get("aromni") or {}

    def tts_batch(self, texts: list[str], options: dict, seed: int | None) -> tuple[int, list[dict]]:
        """``aromni tts --batch`` on the server: (sample rate, per text {"pcm": s16le bytes, "codes", "stats"})."""
        out = self._post("/v1/aromni/speech/batch", self._body(options, seed, inputs=texts))
        return int(out["sample_rate"]), [{"pcm": base64.b64decode(it["audio"]), "codes": it["codes"],
                                          "stats": it["stats"]} for it in out["items"]]

    def asr(self, data: list[tuple[bytes, str]], options: dict, seed: int | None, window: float) -> list[Answer]:
        """Transcripts of audio files (bytes, name) with their confidence, as ``aromni asr`` makes them."""
        fields = {k: str(v) for k, v in self._body(None, seed, window=window).items()}
        fields["options"] = json.dumps(options)
        body, ctype = multipart(fields, [("file", os.path.basename(name) or "audio", b) for b, name in data])
        out = self._post("/v1/audio/transcriptions", data=body, content_type=ctype)
        return [Answer.from_dict(a) for a in out["aromni"]["answers"]]

    def caption(self, data: list[tuple[bytes, str]], options: dict, seed: int | None,
                instruction: str | None = None, exif_transpose: bool = False) -> list[Answer]:
        """Captions of image files (bytes, name) with their confidence; the server's messages about image ``i``
        name its file."""
        body = self._body(options, seed, images=[base64.b64encode(b).decode() for b, _ in data],
                          instruction=instruction, exif_transpose=exif_transpose or None)
        try:
            return [Answer.from_dict(a) for a in self._post("/v1/aromni/caption", body)["answers"]]
        except ServerError as e:
            msg = re.sub(r"images\[(\d+)\]", lambda m: data[int(m[1])][1] if int(m[1]) < len(data) else m[0],
                         str(e))
            raise ServerError(msg, e.status) from None

    def t2i(self, texts: list[str], n: int, options: dict, seed: int | None) -> list[bytes]:
        """PNG files, prompt-major as tasks.t2i (the bytes the in-process command writes)."""
        body = self._body(options, seed, prompt=texts, n=n, response_format="b64_json")
        out = self._post("/v1/images/generations", body)
        return [base64.b64decode(d["b64_json"]) for d in out["data"]]

    def generate(self, layout: str, task: str, prompts: list[list[int]], options: dict, seeds: list[int],
                 on_token: Callable[[int, int], None] | None = None,
                 on_finish: Callable[[int], None] | None = None) -> Generated:
        """``generate.generate`` on the server (``layout``: the caller's vocabulary fingerprint): the same
        callbacks, and the same ids."""
        body = self._body(options, None, sequences=prompts, seeds=seeds, task=task, layout=layout, stream=True)
        done = None
        for line in self._lines("/v1/aromni/generate", body):
            if not line:
                continue
            ev = json.loads(line)
            if "token" in ev:
                if on_token is not None:
                    on_token(ev["row"], ev["token"])
            elif ev.get("end"):
                if on_finish is not None:
                    on_finish(ev["row"])
            elif ev.get("done"):
                done = ev
        if done is None:
            raise self._cut_off()
        return Generated(done["tokens"], done["finish"], new_tokens=done["new_tokens"], decode_s=done["seconds"])

    def chat(self, messages: list[dict], options: dict, seed: int | None) -> dict:
        """One chat turn (the conversation travels in ``messages``); the assistant message as the server
        returns it."""
        return self._post("/v1/chat/completions", self._body(options, seed, messages=messages)
                          )["choices"][0]["message"]


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of text ``fields`` and ``files`` (part name, file name, bytes), and its
    content type."""
    boundary = "aromni-" + uuid.uuid4().hex

    def head(name: str, filename: str | None = None) -> bytes:
        disp = f'form-data; name="{_quoted(name)}"' + (f'; filename="{_quoted(filename)}"' if filename else "")
        extra = "\r\nContent-Type: application/octet-stream" if filename else ""
        return f"--{boundary}\r\nContent-Disposition: {disp}{extra}\r\n\r\n".encode()

    parts = [head(k) + v.encode() + b"\r\n" for k, v in fields.items()]
    parts += [head(k, fn) + b + b"\r\n" for k, fn, b in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _quoted(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', "%22").replace("\r", " ").replace("\n", " ")

