"""A chat conversation held by the client and decoded by ``aromni serve``.

The server keeps nothing between requests: each turn sends the whole conversation (user turns with their
images and audio as bytes, replies with their token ids), and the server replays it into a ``ChatSession``
exactly as one held in-process, so a seeded conversation gets the same replies either way. Lean: standard
library only, like :mod:`core.client`.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

from .client import Client, fresh_seed

# core.chat.ChatSession.turn_seed: turn t of a conversation seeded s decodes with (s * TURN_MUL + t) mod 2^62
TURN_MUL, SEED_MOD = 1_000_003, 2**62


@dataclass
class RemoteReply:
    """A reply as the server sends it: PNG and WAV files as bytes (``core.chat.ChatReply``'s fields)."""

    text: str
    transcript: str
    images: list[bytes]
    audio: list[bytes]
    tokens: list[int]
    trimmed: int = 0


def user_message(text: str | None = None, images: list[bytes] | None = None, audio: bytes | None = None) -> dict:
    """An OpenAI chat user message of text, images (file bytes) and one audio file (bytes)."""
    parts: list[dict] = [] if text is None else [{"type": "text", "text": text}]
    for b in images or []:
        parts.append({"type": "image_url",
                      "image_url": {"url": "data:application/octet-stream;base64," + base64.b64encode(b).decode()}})
    if audio is not None:
        parts.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(),
                                                             "format": "wav"}})
    return {"role": "user", "content": parts}


class RemoteChat:
    """One conversation decoded by a server: ``say``, ``replay`` and ``reset`` as ``core.chat.ChatSession``'s,
    with the same per-turn seeds (a reset forgets the history, and turns go on counting)."""

    def __init__(self, client: Client, options: dict, seed: int | None = None):
        self.client, self.options = client, options
        self.seed = int(seed) if seed is not None else fresh_seed()
        self.messages: list[dict] = []
        self.turns = 0  # turns taken, across resets
        self.before_reset = 0  # turns taken before the last reset

    def reset(self) -> None:
        self.messages = []
        self.before_reset = self.turns

    def _request_seed(self) -> int:
        # the server counts turns from the first message; the seed that makes its count line up with ours
        shift = self.before_reset * pow(TURN_MUL, -1, SEED_MOD)
        return (self.seed + shift) % SEED_MOD

    def say(self, text: str | None = None, images: list[bytes] | None = None,
            audio: bytes | None = None) -> RemoteReply:
        """One user turn -> the model's reply (both join the conversation)."""
        user = user_message(text, images, audio)
        msg = self.client.chat(self.messages + [user], self.options, self._request_seed())
        ext = msg.get("aromni") or {}
        reply = RemoteReply(text=msg.get("content") or "", transcript=ext.get("transcript") or "",
                            images=[base64.b64decode(im["b64_json"]) for im in msg.get("images") or []],
                            audio=[base64.b64decode(a) for a in ext.get("audio") or []],
                            tokens=list(ext.get("tokens") or []), trimmed=int(ext.get("trimmed") or 0))
        self.messages += [user, {"role": "assistant", "content": reply.text, "aromni": {"tokens": reply.tokens}}]
        self.turns += 1
        return reply

    def replay(self, reply: str, text: str | None = None, images: list[bytes] | None = None,
               audio: bytes | None = None) -> None:
        """A user turn with a given assistant reply (text): both join the conversation, nothing is decoded."""
        self.messages += [user_message(text, images, audio), {"role": "assistant", "content": reply}]
        self.turns += 1
