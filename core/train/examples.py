"""Corpus manifest records -> training samples, with the model's tokenizers and prompt templates.

Single-task records go through ``core.prompts.build_example``. Chat records
(``{"task": "chat", "turns": [{"role": "user"|"assistant", "text"?, "image"?, "audio"?}, ...]}``) become
``<bos>`` + per turn: user -> ``chat_turn`` ("USER:" images audio text <eoh> "GPT:"); assistant ->
[``<-Ins->`` transcript ``<-Res->`` when the user spoke and gave the words] + text / image / audio + ``<eom>``.
``response_len`` of a chat sample is the length of its last assistant turn.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import AromniError, InputError
from ..prompts import PromptContext, _seg, build_example, chat_turn
from ..tokens import audio_block, image_block
from .data import Sample

CACHE_ITEMS = 4096  # encoded files kept (code lists are small)


class ExampleBuilder:
    """``builder(record, base_dir, where) -> Sample``; tokenizers may be None for modalities never used."""

    def __init__(self, vocab, text=None, image=None, speech=None, prompts: dict | None = None):
        self.vocab, self.text, self.image, self.speech = vocab, text, image, speech
        self.ctx = PromptContext(vocab, text.encode if text is not None else None, (prompts or {}).get("instructions"))
        self._cache: dict = {}

    # --- modalities -----------------------------------------------------------------------------
    def _path(self, rel: str, base: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(base, rel)

    def _cached(self, kind: str, path: str, encode) -> list[int]:
        # mixes repeat records (and chats reuse files): encode each file once
        key = (kind, os.path.abspath(path))
        if key not in self._cache:
            if len(self._cache) >= CACHE_ITEMS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = encode(path)
        return self._cache[key]

    def image_codes(self, rel: str, base: str, where: str) -> list[int]:
        if self.image is None:
            raise AromniError(f"{where}: record has an image but no image tokenizer is configured")
        from ..image_tokenizer import open_image

        return self._cached("image", self._path(rel, base), lambda p: self.image.encode([open_image(p)])[0].tolist())

    def audio_codes(self, rel: str, base: str, where: str) -> list[int]:
        if self.speech is None:
            raise AromniError(f"{where}: record has audio but no speech tokenizer is configured")
        from ..audio_io import load_audio

        return self._cached("audio", self._path(rel, base),
                            lambda p: self.speech.encode(load_audio(p, self.speech.sample_rate)).reshape(-1).tolist())

    def _need_text(self, where: str) -> None:
        if self.text is None:
            raise AromniError(f"{where}: record has text but no text tokenizer is configured")

    # --- records --------------------------------------------------------------------------------
    def __call__(self, rec: dict, base: str, where: str) -> Sample:
        task = rec.get("task")
        if task == "chat":
            return self.chat(rec, base, where)
        need = {"tts": ("text", "audio"), "asr": ("audio", "text"), "caption": ("image", "text"),
                "t2i": ("text", "image"), "s2i": ("audio", "image"), "text": ("text",)}
        if task not in need:
            raise InputError(f"unknown task {task!r} (known: {', '.join(list(need) + ['chat'])})", where)
        missing = [k for k in need[task] if not rec.get(k)]
        if missing:
            raise InputError(f"a {task} record needs {' and '.join(repr(k) for k in missing)}", where)
        if "text" in need[task] or rec.get("text"):
            self._need_text(where)
        image = self.image_codes(rec["image"], base, where) if "image" in need[task] else None
        audio = self.audio_codes(rec["audio"], base, where) if "audio" in need[task] else None
        ex = build_example(self.ctx, task, text=rec.get("text"), transcript=rec.get("text"), image_codes=image,
                           audio_codes=audio)
        return Sample(np.asarray(ex.ids, dtype=np.int64), task, ex.response_len)

    def chat(self, rec: dict, base: str, where: str) -> Sample:
        v = self.vocab
        turns = rec.get("turns")
        if not isinstance(turns, list) or not turns:
            raise InputError("a chat record needs a non-empty 'turns' list", where)
        self._need_text(where)
        ids, last_resp, spoken = [v.bos], 0, None
        for i, t in enumerate(turns):
            role = t.get("role") if isinstance(t, dict) else None
            w = f"{where} turn {i}"
            images = [self.image_codes(t["image"], base, w)] if t.get("image") else []
            if role == "user":
                audio = self.audio_codes(t["audio"], base, w) if t.get("audio") else None
                ids += chat_turn(self.ctx, text=t.get("text"), image_codes=images, audio_codes=audio)
                spoken = t.get("text") if audio is not None else None
            elif role == "assistant":
                resp: list[int] = []
                if spoken:
                    resp += [v.ins] + _seg(self.ctx, spoken) + [v.res]
                if t.get("text"):
                    resp += _seg(self.ctx, t["text"])
                for codes in images:
                    resp += image_block(codes, v)
                if t.get("audio"):
                    resp += audio_block(self.audio_codes(t["audio"], base, w), v)
                resp.append(v.eom)
                ids += resp
                last_resp, spoken = len(resp), None
            else:
                raise InputError(f"turn {i}: role must be 'user' or 'assistant' (got {role!r})", where)
        if not last_resp:
            raise InputError("a chat record needs at least one assistant turn", where)
        return Sample(np.asarray(ids, dtype=np.int64), "chat", last_resp)
