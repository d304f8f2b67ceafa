"""Talk to a running ``aromni serve`` (``$AROMNI_HOST``): the commands send their work here instead of loading
a model, and get back exactly what they would have made in-process (same options, same seeds, lossless
transfer: PCM16 audio, PNG images, token ids)."""
from __future__ import annotations

import base64
import json
import os
from typing import Callable, Iterator

import numpy as np

from .decoding import DecodeOptions
from .errors import AromniError
from .generate import Generation
from .serve.wire import from_pcm16, options_payload
from .vocab import VocabLayout

HOST_ENV = "AROMNI_HOST"
KEY_ENV = "AROMNI_API_KEY"


def host_from(host: str | None, local: bool = False) -> str | None:
    """The server to use: ``host``, else ``$AROMNI_HOST``; None when ``local`` or neither is set."""
    if local:
        return None
    h = (host or os.environ.get(HOST_ENV) or "").strip()
    if not h:
        return None
    return h if "://" in h else "http://" + h


class Client:
    """One server. Every method raises AromniError with one line: unreachable server, the server's own error
    message, or an answer cut off before its end."""

    def __init__(self, host: str, model: str | None = None, api_key: str | None = None, timeout: float = 3600.0):
        import httpx

        self.host, self.model = host.rstrip("/"), model
        key = api_key or os.environ.get(KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self.http = httpx.Client(base_url=self.host, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))

    # ------------------------------------------------------------------------------------------
    def _fail(self, e: Exception) -> AromniError:
        hx = self._httpx
        if isinstance(e, (hx.ConnectError, hx.ConnectTimeout)):
            return AromniError(f"cannot reach the aromni server at {self.host} ({HOST_ENV}); start it with "
                               "'aromni serve', or run in-process with --local")
        if isinstance(e, hx.TimeoutException):
            return AromniError(f"the aromni server at {self.host} did not answer in time")
        return AromniError(f"the aromni server at {self.host} broke off its answer ({type(e).__name__})")

    def _check(self, r) -> None:
        if r.status_code < 400:
            return
        try:
            msg = json.loads(r.read())["error"]["message"]
        except Exception:  # noqa: BLE001 - not our error shape (a proxy, another server)
            msg = f"HTTP {r.status_code}"
        raise AromniError(f"server: {msg}")

    def _post(self, path: str, **kw) -> dict:
        try:
            r = self.http.post(path, **kw)
        except self._httpx.HTTPError as e:
            raise self._fail(e) from None
        self._check(r)
        return r.json()

    def _stream_lines(self, path: str, body: dict) -> Iterator[bytes]:
        try:
            with self.http.stream("POST", path, json=body) as r:
                self._check(r)
                yield from r.iter_lines()
        except self._httpx.HTTPError as e:
            raise self._fail(e) from None

    def _body(self, opts: DecodeOptions | None, seed: int | None, **kw) -> dict:
        body = {k: v for k, v in kw.items() if v is not None}
        if self.model:
            body["model"] = self.model
        if seed is not None:
            body["seed"] = int(seed)
        if opts is not None:
            body["options"] = options_payload(opts)
        return body

    # ------------------------------------------------------------------------------------------
    def info(self) -> dict:
        """The model's vocabulary layout and rates (loads it on the server)."""
        return self._post("/v1/aromni/info", json=self._body(None, None))

    def vocab(self) -> VocabLayout:
        return VocabLayout.from_dict(self.info()["vocab"])

    def task_prompt(self, task: str, ids: list[int], compat: bool, source: str) -> tuple[list[int], list[int]]:
        """prompts.task_prompt with the server model's template: (prompt, opened)."""
        out = self._post("/v1/aromni/prompt", json=self._body(None, None, task=task, ids=ids, compat=compat,
                                                               source=source))
        return out["prompt"], out["opened"]

    def tts(self, text: str, opts: DecodeOptions, seed: int | None,
            on_start: Callable[[int], None], on_audio: Callable[[np.ndarray], None]) -> dict:
        """Speech streamed as the server makes it: ``on_start(sample_rate)`` once, then ``on_audio(chunk)``;
        returns the server's stats."""
        body = self._body(opts, seed, input=text, response_format="pcm", stream_format="sse")
        done = None
        for line in self._stream_lines("/v1/audio/speech", body):
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev.get("type") == "speech.audio.start":
                on_start(int(ev["sample_rate"]))
            elif ev.get("type") == "speech.audio.delta":
                on_audio(from_pcm16(base64.b64decode(ev["audio"])))
            elif ev.get("type") == "speech.audio.done":
                done = ev
        if done is None:
            raise AromniError(f"the aromni server at {self.host} broke off its answer")
        return done.get("aromni") or {}

    def asr(self, data: list[tuple[bytes, str]], opts: DecodeOptions, seed: int | None, window: float) -> list[str]:
        form = {k: str(v) for k, v in self._body(None, seed, window=window).items()}
        form["options"] = json.dumps(options_payload(opts))
        files = [("file", (os.path.basename(name), b, "application/octet-stream")) for b, name in data]
        out = self._post("/v1/audio/transcriptions", data=form, files=files)
        return out.get("texts") or [out["text"]]

    def caption(self, data: list[bytes], opts: DecodeOptions, seed: int | None, instruction: str | None = None,
                exif_transpose: bool = False) -> list[str]:
        body = self._body(opts, seed, images=[base64.b64encode(b).decode() for b in data], instruction=instruction,
                          exif_transpose=exif_transpose or None)
        return self._post("/v1/aromni/caption", json=body)["texts"]

    def t2i(self, texts: list[str], n: int, opts: DecodeOptions, seed: int | None) -> list:
        """PIL images, prompt-major as tasks.t2i."""
        import io

        from PIL import Image
        body = self._body(opts, seed, prompt=texts, n=n, response_format="b64_json")
        out = self._post("/v1/images/generations", json=body)
        return [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in out["data"]]

    def generate(self, vocab: VocabLayout, prompts: list[list[int]], opts: DecodeOptions, seeds: list[int],
                 on_token: Callable[[int, int], None] | None = None,
                 on_finish: Callable[[int], None] | None = None) -> Generation:
        """``generate.generate`` on the server: same arguments (but the model), same callbacks, same result."""
        body = self._body(opts, None, sequences=prompts, seeds=seeds, task=opts.task, layout=vocab.fingerprint,
                          stream=True)
        done = None
        for line in self._stream_lines("/v1/aromni/generate", body):
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
            raise AromniError(f"the aromni server at {self.host} broke off its answer")
        return Generation(done["tokens"], done["finish"], new_tokens=done["new_tokens"], decode_s=done["seconds"])

    def chat(self, messages: list[dict], opts: DecodeOptions, seed: int | None) -> dict:
        """One chat turn; the assistant message as the server returns it."""
        body = self._body(opts, seed, messages=messages)
        return self._post("/v1/chat/completions", json=body)["choices"][0]["message"]

    def close(self) -> None:
        self.http.close()
