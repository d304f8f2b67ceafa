"""Multi-turn chat: a conversation's history, its user turns (text, images, speech), given assistant turns
replayed into the history, and one turn of several conversations decoded as one batch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .bundle import Omni
from .decoding import DecodeOptions, options_for, with_model_defaults
from .errors import AromniError, InputError
from .media import decode_images, image_codes, need, speech_codes
from .prompts import PromptContext, chat_prompt, chat_turn
from .rows import base_seed, engine
from .tokens import parse_response


@dataclass
class ChatReply:
    text: str
    transcript: str  # the <-Ins-> … <-Res-> part (the model's transcription of the user's speech), if any
    images: list  # PIL images
    audio: list  # mono float32 arrays at omni.speech.sample_rate
    tokens: list[int]
    trimmed: int = 0  # oldest turns dropped to fit the context


@dataclass
class ChatSession:
    """One conversation: the history of finished turns and per-turn seeds."""

    omni: Omni
    opts: DecodeOptions = field(default_factory=lambda: options_for("chat"))
    seed: int | None = None
    history: list[int] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)  # history length after each turn
    turns: int = 0

    def __post_init__(self):
        self.seed = base_seed(self.seed)

    def reset(self) -> None:
        """Forget the conversation (the turn count, and so the seeds of later turns, go on)."""
        self.history, self.turn_ends = [], []

    def user_turn(self, text: str | None = None, images: list | None = None, audio: np.ndarray | None = None,
                  append: str | None = None) -> list[int]:
        """Token ids of one user turn ("USER:" … "GPT:")."""
        if text is None and audio is None and not images:
            raise InputError("empty chat turn: give text, audio or an image")
        if text is not None and not text.strip() and audio is None and not images:
            raise InputError("empty chat turn")
        ctx = PromptContext.of(self.omni)
        codes = [c.tolist() for c in image_codes(self.omni, images)] if images else None
        if audio is not None:
            need(self.omni, "speech", "chat with audio")
            return chat_turn(ctx, image_codes=codes, audio_codes=speech_codes(self.omni, audio, "the turn's audio"),
                             append=append if append is not None else text)
        return chat_turn(ctx, text=text, image_codes=codes)

    def prompt(self, turn: list[int]) -> tuple[list[int], int]:
        """The full prompt for ``turn`` and how many of the oldest turns it drops (from the history too) to leave
        room for the reply; the history is unchanged when the turn does not fit at all."""
        ctx = PromptContext.of(self.omni)
        limit = self.omni.model.cfg.max_seq_len
        reserve = min(self.opts.max_new_tokens, max(16, limit // 4))
        history, ends = self.history, list(self.turn_ends)
        while True:
            p = chat_prompt(ctx, history, turn)
            if len(p) + reserve <= limit or not ends:
                break
            cut = ends.pop(0)
            history = history[cut:]
            ends = [e - cut for e in ends]
        if len(p) >= limit:
            raise InputError(f"this turn alone ({len(p)} tokens) does not fit the model's context of {limit} tokens")
        trimmed = len(self.turn_ends) - len(ends)
        self.history, self.turn_ends = history, ends
        return p, trimmed

    def turn_seed(self) -> int:
        assert self.seed is not None  # __post_init__ drew one
        return (self.seed * 1_000_003 + self.turns) % 2**62

    def commit(self, turn: list[int], generated: list[int]) -> None:
        self.history = self.history + turn + list(generated)
        self.turn_ends.append(len(self.history))
        self.turns += 1

    def say(self, text: str | None = None, images: list | None = None, audio: np.ndarray | None = None,
            append: str | None = None, on_token: Callable[[int], None] | None = None) -> ChatReply:
        """One user turn -> the model's reply (the turn and reply join the history)."""
        return chat_step([self], [dict(text=text, images=images, audio=audio, append=append)],
                         on_token=None if on_token is None else (lambda b, t: on_token(t)))[0]

    def replay(self, reply: str | list[int], text: str | None = None, images: list | None = None,
               audio: np.ndarray | None = None, append: str | None = None) -> int:
        """One user turn with a given assistant ``reply`` (text, or the reply's token ids as they are): both join
        the history as if the model had answered, nothing is decoded. Returns the number of oldest turns
        dropped to fit the context."""
        turn = self.user_turn(text=text, images=images, audio=audio, append=append)
        _, trimmed = self.prompt(turn)
        if isinstance(reply, str):
            ids = list(self.omni.text.encode(reply)) + [self.omni.vocab.eom]
        else:
            ids = list(reply)
        self.commit(turn, ids)
        return trimmed


def sessions(omni: Omni, opts: DecodeOptions, offsets: list[int], seed: int | None = None) -> list[ChatSession]:
    """One conversation per offset, seeded ``seed + offset`` (``seed``: a random one when None), so a dialog's
    seed depends on its place in the input, not on which others are decoded with it."""
    s0 = base_seed(seed)
    return [ChatSession(omni, opts, seed=s0 + k) for k in offsets]


def reply_from_tokens(omni: Omni, ids: list[int], opts: DecodeOptions) -> ChatReply:
    """A reply's text, transcript, images and speech from its generated ids."""
    parsed = parse_response(ids, omni.vocab)
    images = decode_images(omni, parsed["images"]) if parsed["images"] and omni.image is not None else []
    audio = []
    if omni.speech is not None:
        for seg in parsed["speech"]:
            wav = omni.speech.decode(seg)
            if opts.compat and len(wav):  # the reference chat peak-normalises its speech
                peak = float(np.abs(wav).max())
                wav = wav / peak if peak > 0 else wav
            audio.append(wav.astype(np.float32))
    text = omni.text.decode(parsed["text"]).strip() if omni.text is not None else ""
    transcript = omni.text.decode(parsed["transcript"]).strip() if omni.text is not None else ""
    return ChatReply(text, transcript, images, audio, list(ids))


def chat_step(sessions: list[ChatSession], turns: list[dict], on_token: Callable[[int, int], None] | None = None,
              errors: list | None = None) -> list[ChatReply]:
    """One turn for several conversations, decoded as one batch (they must share the Omni and options).

    With ``errors`` (a list), a turn that cannot be built (bad input, too long for the context) does not stop
    the others: its reply is None, its conversation is unchanged, and ``(index, error)`` joins ``errors``."""
    if not sessions:
        return []
    omni = sessions[0].omni
    opts = with_model_defaults(sessions[0].opts, omni.decode)
    need(omni, "text", "chat")
    built: list[tuple[int, list[int], list[int], int]] = []  # (session index, turn ids, prompt, trimmed)
    for k, (s, t) in enumerate(zip(sessions, turns)):
        try:
            ids = s.user_turn(**t)
            p, trimmed = s.prompt(ids)
        except (AromniError, OSError) as e:
            if errors is None:
                raise
            errors.append((k, e))
            continue
        built.append((k, ids, p, trimmed))
    replies: list[ChatReply] = [None] * len(sessions)  # type: ignore[list-item]
    bs = opts.batch_size
    for i in range(0, len(built), bs):
        chunk = built[i: i + bs]
        cb = None if on_token is None else (lambda b, t, chunk=chunk: on_token(chunk[b][0], t))
        g = engine(omni)(omni.model, omni.vocab, [p for _, _, p, _ in chunk], opts,
                         seeds=[sessions[k].turn_seed() for k, _, _, _ in chunk], on_token=cb)
        for (k, ids, _, trimmed), toks in zip(chunk, g.tokens):
            r = reply_from_tokens(omni, toks, opts)
            r.trimmed = trimmed
            sessions[k].commit(ids, r.tokens)
            replies[k] = r
    return replies
