"""``/v1/chat/completions``: OpenAI chat messages -> one aromni chat turn, and the reply in OpenAI's shapes.

Requests are stateless: the conversation travels in ``messages``. An assistant message may carry
``aromni.tokens`` (the ids the server returned for it), which restores the history exactly; without them its
text is encoded as a finished reply. Speech replies follow OpenAI's audio-output shape (``message.audio``:
one WAV of all speech spans, base64); images come as ``message.images``: ``[{"b64_json": PNG, "mime_type":
"image/png"}]``.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field as dc_field
from typing import TYPE_CHECKING, Protocol

from ..chat import ChatSession
from ..decoding import DecodeOptions
from ..tokens import parse_response
from .http import ApiError, field, seed_of
from .wire import b64, pcm16, png, unb64, wav_bytes

if TYPE_CHECKING:
    import numpy as np


class AudioReader(Protocol):
    """What a chat job needs of the server (``app.Server``, not imported: app imports this module)."""

    def audio(self, omni, data: bytes, name: str) -> np.ndarray: ...


@dataclass
class Turn:
    text: str | None = None
    images: list = dc_field(default_factory=list)  # bytes
    audio: bytes | None = None
    reply_text: str | None = None  # the assistant message that followed (history only)
    reply_tokens: list | None = None


@dataclass
class ChatRequest:
    turns: list[Turn]
    opts: DecodeOptions
    seed: int | None
    stream: bool
    audio_format: str
    include_usage: bool
    model: str
    id: str = dc_field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex[:24])
    created: int = dc_field(default_factory=lambda: int(time.time()))
    server: AudioReader | None = None
    sample_rate: int = 0
    prompt_tokens: int = 0

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def message(self, reply) -> dict:
        msg: dict = {"role": "assistant", "content": reply.text, "refusal": None}
        if reply.audio:
            import numpy as np
            wav = np.concatenate(reply.audio)
            data = wav_bytes(wav, self.sample_rate) if self.audio_format == "wav" else pcm16(wav)
            msg["audio"] = {"id": "audio_" + uuid.uuid4().hex[:24], "data": b64(data),
                            "expires_at": int(time.time()) + 3600, "transcript": reply.text}
        if reply.images:
            msg["images"] = [{"b64_json": b64(png(im)), "mime_type": "image/png"} for im in reply.images]
        msg["aromni"] = {"tokens": list(reply.tokens), "transcript": reply.transcript, "trimmed": reply.trimmed,
                         "audio": [b64(wav_bytes(w, self.sample_rate)) for w in reply.audio],
                         "sample_rate": self.sample_rate}
        return msg

    def finish_reason(self, reply) -> str:
        return "length" if len(reply.tokens) >= self.opts.max_new_tokens else "stop"

    def usage(self, reply) -> dict:
        n = len(reply.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}

    def completion(self, reply) -> dict:
        return {**self._base("chat.completion"), "choices": [{"index": 0, "message": self.message(reply),
                                                              "finish_reason": self.finish_reason(reply)}],
                "usage": self.usage(reply)}

    def chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {**self._base("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def final_chunks(self, reply) -> list[dict]:
        msg = self.message(reply)
        extra = {k: msg[k] for k in ("audio", "images", "aromni") if k in msg}
        out = [self.chunk(extra)] if extra else []
        out.append(self.chunk({}, self.finish_reason(reply)))
        if self.include_usage:
            out.append({**self._base("chat.completion.chunk"), "choices": [], "usage": self.usage(reply)})
        return out


def _parts(msg: dict, k: int) -> Turn:
    content = msg.get("content")
    if isinstance(content, str):
        return Turn(text=content)
    if not isinstance(content, list):
        raise ApiError(400, f"messages[{k}].content must be a string or a list of parts", "invalid_type",
                       "messages")
    t = Turn()
    texts = []
    for j, p in enumerate(content):
        where = f"messages[{k}].content[{j}]"
        if not isinstance(p, dict):
            raise ApiError(400, f"{where} must be an object", "invalid_type", "messages")
        kind = p.get("type")
        if kind == "text":
            texts.append(field(p, "text", str, required=True))
        elif kind == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str):
                raise ApiError(400, f"{where}.image_url.url must be a string", "invalid_type", "messages")
            t.images.append(unb64(url, f"{where}.image_url"))
        elif kind == "input_audio":
            ia = p.get("input_audio")
            if not isinstance(ia, dict) or not isinstance(ia.get("data"), str):
                raise ApiError(400, f"{where}.input_audio.data must be base64 audio", "invalid_type", "messages")
            if t.audio is not None:
                raise ApiError(400, f"messages[{k}]: one audio part per message", "invalid_value", "messages")
            t.audio = unb64(ia["data"], f"{where}.input_audio")
        else:
            raise ApiError(400, f"{where}: unsupported part type {kind!r} (text, image_url, input_audio)",
                           "invalid_value", "messages")
    t.text = "\n".join(texts) if texts else None
    return t


def parse_chat(body: dict, server) -> ChatRequest:
    msgs = field(body, "messages", list, required=True)
    lim = server.cfg.limits
    if not msgs or len(msgs) > lim.messages:
        raise ApiError(400, f"'messages' must hold 1..{lim.messages} messages", "invalid_value", "messages")
    turns: list[Turn] = []
    chars = 0
    for k, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{k}] must be an object", "invalid_type", "messages")
        role = m.get("role")
        if role in ("system", "developer"):
            continue  # the model has no system prompt
        if role == "user":
            if turns and turns[-1].reply_text is None:
                raise ApiError(400, f"messages[{k}]: two user messages in a row (merge them into one)",
                               "invalid_value", "messages")
            turns.append(_parts(m, k))
            chars += len(turns[-1].text or "")
        elif role == "assistant":
            if not turns or turns[-1].reply_text is not None:
                raise ApiError(400, f"messages[{k}]: an assistant message must follow a user message",
                               "invalid_value", "messages")
            text = m.get("content")
            if isinstance(text, list):
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
            if not isinstance(text, str):
                audio = m.get("audio")
                text = audio.get("transcript") if isinstance(audio, dict) else None
            if not isinstance(text, str):
                raise ApiError(400, f"messages[{k}]: an assistant message needs text content", "invalid_type",
                               "messages")
            toks = (m.get("aromni") or {}).get("tokens") if isinstance(m.get("aromni"), dict) else None
            if toks is not None and not (isinstance(toks, list) and all(isinstance(x, int) for x in toks)):
                raise ApiError(400, f"messages[{k}].aromni.tokens must be a list of token ids", "invalid_type",
                               "messages")
            turns[-1].reply_text, turns[-1].reply_tokens = text, toks
            chars += len(text)
        else:
            raise ApiError(400, f"messages[{k}]: unknown role {role!r}", "invalid_value", "messages")
    if not turns or turns[-1].reply_text is not None:
        raise ApiError(400, "the last message must be a user message", "invalid_value", "messages")
    if chars > lim.text_chars:
        raise ApiError(400, f"the messages hold more than {lim.text_chars} characters", "text_too_long", "messages")
    if field(body, "n", int, 1) != 1:
        raise ApiError(400, "only n = 1 is supported", "invalid_value", "n")
    fixed: dict = {}
    mt = field(body, "max_completion_tokens", int, field(body, "max_tokens", int))
    if mt is not None:
        if not 1 <= mt <= lim.max_tokens:
            raise ApiError(400, f"max tokens must be 1..{lim.max_tokens}", "invalid_value", "max_tokens")
        fixed["max_new_tokens"] = mt
    temp = field(body, "temperature", float)
    if temp is not None:
        fixed.update({"greedy": True} if temp == 0 else {"temperature": temp})
    top_p = field(body, "top_p", float)
    if top_p is not None:
        fixed["top_p"] = top_p
    modalities = field(body, "modalities", list)
    if modalities is not None:
        if not all(m in ("text", "audio", "image") for m in modalities):
            raise ApiError(400, "modalities may hold text, audio and image", "invalid_value", "modalities")
        fixed["speech"] = "audio" in modalities
        fixed["images"] = "image" in modalities
    audio = field(body, "audio", dict, {})
    fmt = audio.get("format", "wav")
    if fmt not in ("wav", "pcm16"):
        raise ApiError(400, "audio.format must be wav or pcm16", "unsupported_format", "audio")
    so = field(body, "stream_options", dict, {})
    model = body.get("model")
    return ChatRequest(turns, server.options("chat", body.get("options"), **fixed), seed_of(body),
                       field(body, "stream", bool, False), fmt, bool(so.get("include_usage")),
                       model if isinstance(model, str) else "default", server=server)


def chat_job(omni, req: ChatRequest, st) -> object:
    """Replay the history into a ChatSession, then decode the last turn (text deltas to ``st``)."""
    from ..image_tokenizer import open_image

    server = req.server
    assert server is not None  # parse_chat sets it

    def load(t: Turn, k: int) -> dict:
        audio = None if t.audio is None else server.audio(omni, t.audio, f"messages[{k}] audio")
        images = [open_image(b, f"messages[{k}] image {j}") for j, b in enumerate(t.images)] or None
        return {"text": t.text, "images": images, "audio": audio}

    req.sample_rate = omni.speech.sample_rate if omni.speech is not None else 0
    s = ChatSession(omni, req.opts, seed=req.seed)
    for k, t in enumerate(req.turns[:-1]):
        ids = s.user_turn(**load(t, k))
        s.prompt(ids)
        given = (t.reply_tokens if t.reply_tokens is not None
                 else list(omni.text.encode(t.reply_text)) + [omni.vocab.eom])
        s.commit(ids, given)
    on_token = None
    if st is not None:
        v, ids_so_far, sent = omni.vocab, [], [""]

        def on_token(t: int) -> None:
            ids_so_far.append(t)
            if not v.is_text(t):
                return
            full = omni.text.decode(parse_response(ids_so_far, v)["text"]).lstrip()
            if full.startswith(sent[0]) and len(full) > len(sent[0]):
                st.put(full[len(sent[0]):])
                sent[0] = full
    reply = s.say(**load(req.turns[-1], len(req.turns) - 1), on_token=on_token)
    req.prompt_tokens = len(s.history) - len(reply.tokens)
    return reply
