"""Task API on top of the decoding engine: tts, asr, caption, t2i, s2i, and multi-turn chat.

Seeds: row i of a task call is decoded with its own generator seeded ``seed + i`` (i counts prompts in input
order, after long-input splitting), so batch size and batch composition never change a row's output.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from . import rerank
from .bundle import Omni
from .decoding import DecodeOptions, options_for, with_model_defaults
from .errors import AromniError, InputError
from .generate import Generation, generate
from .prompts import (PromptContext, asr_prompt, caption_prompt, chat_prompt, chat_turn, s2i_prompt, t2i_prompt,
                      tts_prompt)
from .segmenting import split_audio, split_sentences, split_words
from .vocab import VocabLayout

ASR_WINDOW_S = 20.0  # longest audio window per ASR prompt (the context may force shorter ones)


@dataclass
class TTSResult:
    wav: np.ndarray  # mono float32 at omni.speech.sample_rate
    codes: np.ndarray  # speech codes (int64)
    stats: dict  # first_audio_s, tokens_per_s, rtf, audio_s, tokens, sentences (decodes: pieces with chunk_words)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _need(omni: Omni, kind: str, task: str):
    tok = getattr(omni, kind)
    if tok is None:
        raise AromniError(f"{task} needs a {kind} tokenizer, but the model at {omni.source or '?'} has none")
    if omni.model is None:
        raise AromniError(f"{task} needs the model weights (loaded with model=False)")
    return tok


def model_options(omni: Omni, opts: DecodeOptions | None, task: str) -> DecodeOptions:
    """``opts`` (default: ``task``'s) completed with the model's own decoding defaults (bundle "decode")."""
    return with_model_defaults(opts or options_for(task), omni.decode)


def engine(omni: Omni) -> Callable[..., Generation]:
    """The decoding call of every task: ``omni.engine`` when set (a server's batcher, with ``generate``'s
    signature), else ``generate``."""
    return omni.engine or generate


def base_seed(seed: int | None) -> int:
    return int(seed) if seed is not None else random.SystemRandom().randrange(2**62)


def decode_rows(omni: Omni, prompts: list[list[int]], opts: DecodeOptions, seed: int | None,
                on_token: Callable[[int, int], None] | None = None,
                seeds: list[int] | None = None) -> tuple[list[list[int]], list[Generation]]:
    """Decode prompts in batches of ``opts.batch_size``; row i uses seed ``seed + i`` (or ``seeds[i]``)."""
    if seeds is None:
        s0 = base_seed(seed)
        seeds = [s0 + i for i in range(len(prompts))]
    out: list[list[int]] = []
    gens = []
    bs = opts.batch_size
    for i in range(0, len(prompts), bs):
        chunk = prompts[i: i + bs]
        cb = None if on_token is None else (lambda b, t, i=i: on_token(i + b, t))
        g = engine(omni)(omni.model, omni.vocab, chunk, opts, seeds=seeds[i: i + bs], on_token=cb)
        out += g.tokens
        gens.append(g)
    return out, gens


def best_of(omni: Omni, prompts: list[list[int]], opts: DecodeOptions, seed: int | None,
            score: Callable[[int, list[list[int]]], list[float]]) -> tuple[list[list[int]], list[Generation]]:
    """Each prompt's response, the best of ``opts.candidates`` by ``score(prompt index, responses)``.
    Candidate 0 of prompt i is what ``decode_rows`` gives it (seed ``seed + i``); the others are sampled
    (rerank.candidate_options) with seeds derived from it."""
    s0 = base_seed(seed)
    rows, gens = decode_rows(omni, prompts, opts, s0)
    n = opts.candidates
    if n <= 1 or not prompts:
        return rows, gens
    alt, more = decode_rows(omni, [p for p in prompts for _ in range(n - 1)], rerank.candidate_options(opts), None,
                         seeds=[rerank.candidate_seed(s0 + i, j) for i in range(len(prompts)) for j in range(1, n)])
    out = []
    for i, first in enumerate(rows):
        cands = [first] + alt[i * (n - 1): (i + 1) * (n - 1)]
        out.append(cands[rerank.best(score(i, cands))])
    return out, gens + more


def cut_at_stop(ids: list[int], vocab: VocabLayout) -> list[int]:
    for i, t in enumerate(ids):
        if t in (vocab.eos, vocab.eom):
            return ids[:i]
    return ids


def fit_prompt(build: Callable[[str], list[int]], text: str, limit: int) -> list[int]:
    """``build(text)``, with the text cut (at a word boundary when possible) until the prompt has <= ``limit``
    tokens: a prompt that is too long for the context keeps its beginning."""
    p = build(text)
    if len(p) <= limit:
        return p
    lo, hi = 0, len(text)  # longest prefix that fits: binary search on characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(build(text[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo]
    if " " in cut.strip():
        cut = cut.rstrip().rsplit(" ", 1)[0]
    if lo == 0 or len(build(cut)) > limit:
        raise InputError(f"the model's context ({limit} tokens) is too small for this prompt template")
    return build(cut)


def decode_text(omni: Omni, ids: list[int]) -> str:
    """Text of a response: cut at the first ``</s>``/``<eom>``, only text ids, stripped."""
    v = omni.vocab
    return omni.text.decode([t for t in cut_at_stop(ids, v) if v.is_text(t)]).strip()


def _image_codes(omni: Omni, images: list) -> torch.Tensor:
    """PIL images (or paths / bytes) -> codes [N, image_tokens]."""
    from PIL import Image

    tok = omni.image
    pil = []
    for im in images:
        if isinstance(im, Image.Image):
            pil.append(im)
        else:
            from .image_tokenizer import open_image
            pil.append(open_image(im))
    codes = tok.encode(pil)
    if codes.shape[1] != omni.vocab.image_tokens:
        raise AromniError(f"the image tokenizer makes {codes.shape[1]} codes per image but the model expects "
                          f"{omni.vocab.image_tokens}")
    return codes


def _speech_codes(omni: Omni, wav: np.ndarray) -> list[int]:
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        raise InputError("audio holds no samples")
    return omni.speech.encode(wav).tolist()


def _decode_images(omni: Omni, rows: list[list[int]]) -> list:
    codes = torch.tensor([r for r in rows], dtype=torch.long)
    return omni.image.decode(codes)


def parse_response(ids: list[int], vocab: VocabLayout) -> dict:
    """Split generated ids into text ids, <-Ins->…<-Res-> transcript ids, images (code lists) and speech (code
    lists). Tolerant of malformed spans (``--compat`` allows any non-image token in text)."""
    text, transcript, images, speech = [], [], [], []
    in_ins = False
    ids = cut_at_stop(ids, vocab)
    i, n = 0, len(ids)
    while i < n:
        t = ids[i]
        if t == vocab.boi:
            j, codes = i + 1, []
            while j < n and vocab.is_image(ids[j]):
                codes.append(vocab.image_code(ids[j]))
                j += 1
            if codes:
                images.append(codes)
            i = j + (1 if j < n and ids[j] == vocab.eoi else 0)
            continue
        if t == vocab.boa or vocab.is_audio(t):
            j, codes = (i + 1 if t == vocab.boa else i), []
            while j < n and vocab.is_audio(ids[j]):
                codes.append(vocab.audio_code(ids[j]))
                j += 1
            if codes:
                speech.append(codes)
            i = j + (1 if j < n and ids[j] == vocab.eoa else 0)
            continue
        if t == vocab.ins:
            in_ins = True
        elif t == vocab.res:
            in_ins = False
        elif vocab.is_text(t):
            (transcript if in_ins else text).append(t)
        i += 1
    return {"text": text, "transcript": transcript, "images": images, "speech": speech}


def _whole_image(codes: list[int], vocab: VocabLayout) -> list[int]:
    """``codes`` cut or zero-padded to one image (short only when the context ran out)."""
    c = codes[: vocab.image_tokens]
    return c + [0] * (vocab.image_tokens - len(c))


def _image_of(ids: list[int], vocab: VocabLayout) -> list[int]:
    """The image codes of a response, as one whole image."""
    return _whole_image([vocab.image_code(t) for t in ids if vocab.is_image(t)], vocab)


def _transcript_of(omni: Omni, parsed: dict) -> str:
    """The ``<-Ins->`` transcript of a parsed response (its plain text when there is none)."""
    return omni.text.decode(parsed["transcript"] or parsed["text"]).strip()


def _speech_of(ids: list[int], vocab: VocabLayout) -> list[int]:
    return [c for seg in parse_response(ids, vocab)["speech"] for c in seg]


def _spread(has: list[bool], scores: list[float]) -> list[float]:
    """The scores of the candidates that ``has`` an output, in order, and ``-inf`` for those without one."""
    it = iter(scores)
    return [next(it) if h else float("-inf") for h in has]


def _speech_scorer(omni: Omni, ctx: PromptContext, sentences: list[str]):
    """best_of score: how likely the model's own ASR finds row i's sentence in each candidate's speech."""
    def score(i: int, cands: list[list[int]]) -> list[float]:
        clips = [_speech_of(c, omni.vocab) for c in cands]
        return _spread([bool(c) for c in clips],
                       rerank.transcript_scores(omni, ctx, [c for c in clips if c], sentences[i]))
    return score


def _image_scorer(omni: Omni, ctx: PromptContext, texts: list[str | None]):
    """best_of score: how likely the model's own captioner finds row i's text for each candidate's image."""
    def score(i: int, cands: list[list[int]]) -> list[float]:
        if not texts[i]:
            return [0.0] * len(cands)
        has = [any(omni.vocab.is_image(t) for t in c) for c in cands]
        return _spread(has, rerank.caption_scores(omni, ctx, [_image_of(c, omni.vocab) for c, h in zip(cands, has)
                                                              if h], texts[i]))
    return score


# ----------------------------------------------------------------------------------------------
# TTS
# ----------------------------------------------------------------------------------------------
def speech_pieces(text: str, chunk_words: int = 0) -> list[str]:
    """What one TTS decode speaks: the text's sentences, or with ``chunk_words`` their pieces of at most that
    many words (a small model that finishes long prompts as training did still reads a few words right)."""
    return [p for s in split_sentences(text) for p in split_words(s, chunk_words)]


PIECE_SECONDS = (0.5, 0.5)  # speech per piece of N words: at most 0.5 s + 0.5 s per word (espeak says ~0.3 s/word)


def piece_options(opts: DecodeOptions, codes_per_s: float) -> DecodeOptions:
    """With ``chunk_words``, each piece's speech span is capped by its length in words (a piece that does not
    stop would otherwise run to ``max_speech_tokens``, 25 s), unless the caller set ``max_speech_tokens``."""
    if not opts.chunk_words or "max_speech_tokens" in opts.explicit:
        return opts
    cap = math.ceil(codes_per_s * (PIECE_SECONDS[0] + PIECE_SECONDS[1] * opts.chunk_words))
    return replace(opts, max_speech_tokens=min(opts.max_speech_tokens, cap))


def lead_in(speech, opts: DecodeOptions) -> np.ndarray:
    """``opts.lead_in`` seconds of silence, put before a TTS clip's first speech: Whisper drops a first "a" of
    speech that starts at the clip's first sample (docs/default-model.md, "Ablations")."""
    return np.zeros(int(round(opts.lead_in * speech.sample_rate)), dtype=np.float32)


def tts(omni: Omni, text: str, opts: DecodeOptions | None = None, on_audio: Callable[[np.ndarray], None] | None = None,
        seed: int | None = None) -> TTSResult:
    """Text -> speech. Long text is split into sentences (and those into pieces of ``opts.chunk_words`` words),
    spoken one after another; ``on_audio(chunk)`` gets audio as soon as the chunked codec releases it (while the
    model is still generating)."""
    speech = _need(omni, "speech", "tts")
    _need(omni, "text", "tts")
    opts = piece_options(model_options(omni, opts, "tts"), speech.sample_rate / speech.hop)
    v, ctx = omni.vocab, PromptContext.of(omni)
    sentences = speech_pieces(text, opts.chunk_words)
    if not sentences:
        raise InputError("no text to speak")
    s0 = base_seed(seed)
    t0 = time.perf_counter()
    first: list[float] = []
    wavs: list[np.ndarray] = []
    all_codes: list[int] = []
    n_tok, gen_s = 0, 0.0

    def emit(chunk: np.ndarray) -> None:
        if len(chunk) == 0:
            return
        if not first:
            first.append(time.perf_counter() - t0)
            chunk = np.concatenate([lead_in(speech, opts), chunk])  # with the first speech, not before it
        wavs.append(chunk)
        if on_audio is not None:
            on_audio(chunk)

    for i, sent in enumerate(sentences):
        prompt = tts_prompt(ctx, sent) + ([] if opts.compat else [v.boa])
        dec = speech.stream(pad=opts.speech_pad)

        def on_token(b: int, t: int) -> None:
            if v.is_audio(t):
                c = v.audio_code(t)
                all_codes.append(c)
                emit(dec.push([c]))

        if opts.candidates > 1:  # the best of N is known only at the end: no streaming within a sentence
            rows, gens = best_of(omni, [prompt], opts, s0 + i, _speech_scorer(omni, ctx, [sent]))
            for t in rows[0]:
                on_token(0, t)
        else:
            gens = [engine(omni)(omni.model, v, [prompt], opts, seeds=[s0 + i], on_token=on_token)]
        emit(dec.flush())
        n_tok += sum(g.new_tokens for g in gens)
        gen_s += sum(g.prefill_s + g.decode_s for g in gens)
    wav = np.concatenate(wavs) if wavs else np.zeros(0, dtype=np.float32)
    total = time.perf_counter() - t0
    audio_s = len(wav) / speech.sample_rate
    stats = {"first_audio_s": first[0] if first else None, "tokens_per_s": n_tok / gen_s if gen_s else 0.0,
             "rtf": total / audio_s if audio_s else None, "audio_s": audio_s, "tokens": n_tok,
             "sentences": len(sentences), "wall_s": total}
    return TTSResult(wav.astype(np.float32), np.asarray(all_codes, dtype=np.int64), stats)


def tts_batch(omni: Omni, texts: list[str], opts: DecodeOptions | None = None,
              seed: int | None = None) -> list[TTSResult]:
    """Several texts decoded together (their sentences are the rows of one batch); no streaming."""
    speech = _need(omni, "speech", "tts")
    opts = piece_options(model_options(omni, opts, "tts"), speech.sample_rate / speech.hop)
    v, ctx = omni.vocab, PromptContext.of(omni)
    owner, prompts, sentences = [], [], []
    for k, text in enumerate(texts):
        sents = speech_pieces(text, opts.chunk_words)
        if not sents:
            raise InputError(f"item {k + 1}: no text to speak")
        for s in sents:
            owner.append(k)
            sentences.append(s)
            prompts.append(tts_prompt(ctx, s) + ([] if opts.compat else [v.boa]))
    t0 = time.perf_counter()
    rows, gens = best_of(omni, prompts, opts, seed, _speech_scorer(omni, ctx, sentences))
    gen_s = sum(g.prefill_s + g.decode_s for g in gens)
    n_tok = sum(g.new_tokens for g in gens)
    segs: list[list[list[int]]] = [[] for _ in texts]  # speech spans per item, in sentence order
    toks = [0] * len(texts)
    for r, o in zip(rows, owner):
        segs[o] += parse_response(r, v)["speech"]
        toks[o] += len(r)
    out = []
    for k in range(len(texts)):
        parts = [speech.decode(seg, pad=opts.speech_pad) for seg in segs[k]]
        wav = np.concatenate([lead_in(speech, opts)] + parts) if parts else np.zeros(0, dtype=np.float32)
        codes = np.asarray([c for seg in segs[k] for c in seg], dtype=np.int64)
        out.append(TTSResult(wav.astype(np.float32), codes,
                             {"first_audio_s": None, "tokens_per_s": n_tok / gen_s if gen_s else 0.0, "rtf": None,
                              "audio_s": len(wav) / speech.sample_rate, "tokens": toks[k],
                              "sentences": owner.count(k)}))
    total = time.perf_counter() - t0
    audio_total = sum(r.stats["audio_s"] for r in out)
    for r in out:
        r.stats["rtf"] = total / audio_total if audio_total else None
    return out


# ----------------------------------------------------------------------------------------------
# ASR, caption
# ----------------------------------------------------------------------------------------------
def asr_windows(omni: Omni, wav: np.ndarray, opts: DecodeOptions, window_s: float = ASR_WINDOW_S) -> list[np.ndarray]:
    """Split one clip into windows whose prompts leave room for a transcript in the model's context."""
    sp = omni.speech
    rate = sp.sample_rate / sp.hop  # codes per second
    base = len(asr_prompt(PromptContext.of(omni), []))
    ctx = omni.model.cfg.max_seq_len
    reserve = min(opts.max_new_tokens, max(32, ctx // 4))
    max_codes = min(int(window_s * rate), ctx - base - reserve)
    if max_codes < 1:
        raise AromniError(f"the model's context ({ctx} tokens) leaves no room for audio in an ASR prompt")
    return [wav[a:b] for a, b in split_audio(wav, sp.sample_rate, max_codes / rate)]


def asr(omni: Omni, wavs: list[np.ndarray], opts: DecodeOptions | None = None, seed: int | None = None,
        window_s: float = ASR_WINDOW_S) -> list[str]:
    """Speech -> text, one string per clip. Long clips are cut at silences into windows that are transcribed as
    one batch and joined."""
    _need(omni, "speech", "asr")
    _need(omni, "text", "asr")
    opts = model_options(omni, opts, "asr")
    ctx = PromptContext.of(omni)
    owner, prompts = [], []
    for k, wav in enumerate(wavs):
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        if wav.size == 0:
            raise InputError(f"clip {k + 1} holds no samples")
        for w in asr_windows(omni, wav, opts, window_s):
            owner.append(k)
            prompts.append(asr_prompt(ctx, _speech_codes(omni, w)))
    rows, _ = decode_rows(omni, prompts, opts, seed)
    texts: list[list[str]] = [[] for _ in wavs]
    for o, r in zip(owner, rows):
        t = decode_text(omni, r)
        if t:
            texts[o].append(t)
    return [" ".join(t) for t in texts]


def caption(omni: Omni, images: list, opts: DecodeOptions | None = None, seed: int | None = None) -> list[str]:
    """Images (PIL, paths or bytes) -> one caption each."""
    _need(omni, "image", "caption")
    _need(omni, "text", "caption")
    opts = model_options(omni, opts, "caption")
    ctx = PromptContext.of(omni)
    codes = _image_codes(omni, images)
    prompts = [caption_prompt(ctx, c.tolist()) for c in codes]
    rows, _ = decode_rows(omni, prompts, opts, seed)
    return [decode_text(omni, r) for r in rows]


# ----------------------------------------------------------------------------------------------
# T2I, S2I
# ----------------------------------------------------------------------------------------------
def t2i(omni: Omni, texts: list[str], n: int = 1, opts: DecodeOptions | None = None, seed: int | None = None) -> list:
    """Texts -> ``n`` PIL images each (prompt-major order); row ``i * n + j`` uses seed ``seed + i * n + j``."""
    _need(omni, "image", "t2i")
    _need(omni, "text", "t2i")
    if n < 1:
        raise AromniError("--n must be at least 1")
    opts = model_options(omni, opts, "t2i")
    v, ctx = omni.vocab, PromptContext.of(omni)
    prompts = []
    limit = min(omni.model.cfg.max_seq_len, (opts.max_total_tokens or 1 << 30)) - (v.image_tokens + 1)
    for text in texts:
        if not text.strip():
            raise InputError("empty text prompt")
        prompts += [fit_prompt(lambda t: t2i_prompt(ctx, t) + [v.boi], text, limit)] * n
    rows, _ = best_of(omni, prompts, opts, seed, _image_scorer(omni, ctx, [t for t in texts for _ in range(n)]))
    return _decode_images(omni, [_image_of(r, v) for r in rows])


def _s2i_scorer(omni: Omni, ctx: PromptContext):
    """best_of score for speech -> image: each image against the first candidate's own transcript."""
    def score(i: int, cands: list[list[int]]) -> list[float]:
        return _image_scorer(omni, ctx, [_transcript_of(omni, parse_response(cands[0], omni.vocab))])(0, cands)
    return score


def s2i(omni: Omni, wavs: list[np.ndarray], opts: DecodeOptions | None = None, seed: int | None = None) -> list[tuple]:
    """Speech -> (transcript, image): ``<-Ins->`` transcript (greedy) ``<-Res->`` then an image (forced)."""
    _need(omni, "speech", "s2i")
    _need(omni, "image", "s2i")
    opts = model_options(omni, opts, "s2i")
    v, ctx = omni.vocab, PromptContext.of(omni)
    prompts = [s2i_prompt(ctx, _speech_codes(omni, w)) + ([] if opts.compat else [v.ins]) for w in wavs]
    if not opts.compat and prompts:
        room = min(opts.max_new_tokens, omni.model.cfg.max_seq_len - max(len(p) for p in prompts))
        text_room = room - (v.image_tokens + 3)  # <-Res->, <boi>, codes, <eoi>
        if text_room < 1:
            raise InputError("audio too long for speech-to-image in this model's context")
        cap = min(opts.max_text_tokens or text_room, text_room)
        opts = opts.replace(max_text_tokens=cap, text_cap_then=opts.text_cap_then or "res")
    rows, _ = best_of(omni, prompts, opts, seed, _s2i_scorer(omni, ctx))
    out = []
    for r in rows:
        parsed = parse_response(r, v)
        img = _whole_image(parsed["images"][0] if parsed["images"] else [], v)
        out.append((_transcript_of(omni, parsed), img, bool(parsed["images"])))
    images = _decode_images(omni, [c for _, c, _ in out]) if out else []
    return [(text, im) for (text, _, _), im in zip(out, images)]


# ----------------------------------------------------------------------------------------------
# Chat
# ----------------------------------------------------------------------------------------------
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
    """One conversation: history of finished turns and per-turn seeds."""

    omni: Omni
    opts: DecodeOptions = field(default_factory=lambda: options_for("chat"))
    seed: int | None = None
    history: list[int] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)  # history length after each turn
    turns: int = 0

    def __post_init__(self):
        self.seed = base_seed(self.seed)

    def reset(self) -> None:
        self.history, self.turn_ends = [], []

    def user_turn(self, text: str | None = None, images: list | None = None, audio: np.ndarray | None = None,
                  append: str | None = None) -> list[int]:
        """Token ids of one user turn ("USER:" … "GPT:")."""
        if text is None and audio is None and not images:
            raise InputError("empty chat turn: give text, audio or an image")
        if text is not None and not text.strip() and audio is None and not images:
            raise InputError("empty chat turn")
        ctx = PromptContext.of(self.omni)
        codes = [c.tolist() for c in _image_codes(self.omni, images)] if images else None
        if audio is not None:
            _need(self.omni, "speech", "chat with audio")
            return chat_turn(ctx, image_codes=codes, audio_codes=_speech_codes(self.omni, audio),
                             append=append if append is not None else text)
        return chat_turn(ctx, text=text, image_codes=codes)

    def prompt(self, turn: list[int]) -> tuple[list[int], int]:
        """The full prompt for ``turn``; drops the oldest turns while the prompt leaves too little room."""
        ctx = PromptContext.of(self.omni)
        limit = self.omni.model.cfg.max_seq_len
        reserve = min(self.opts.max_new_tokens, max(16, limit // 4))
        trimmed = 0
        while True:
            p = chat_prompt(ctx, self.history, turn)
            if len(p) + reserve <= limit or not self.turn_ends:
                break
            cut = self.turn_ends.pop(0)
            self.history = self.history[cut:]
            self.turn_ends = [e - cut for e in self.turn_ends]
            trimmed += 1
        if len(p) >= limit:
            raise InputError(f"this turn alone ({len(p)} tokens) does not fit the model's context of {limit} tokens")
        return p, trimmed

    def turn_seed(self) -> int:
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


def reply_from_tokens(omni: Omni, ids: list[int], opts: DecodeOptions) -> ChatReply:
    parsed = parse_response(ids, omni.vocab)
    images = _decode_images(omni, parsed["images"]) if parsed["images"] and omni.image is not None else []
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


def chat_step(sessions: list[ChatSession], turns: list[dict], on_token: Callable[[int, int], None] | None = None
              ) -> list[ChatReply]:
    """One turn for several conversations, decoded as one batch (they must share the Omni and options)."""
    if not sessions:
        return []
    omni = sessions[0].omni
    opts = with_model_defaults(sessions[0].opts, omni.decode)
    _need(omni, "text", "chat")
    prompts, turn_ids, trims = [], [], []
    for s, t in zip(sessions, turns):
        ids = s.user_turn(**t)
        p, trimmed = s.prompt(ids)
        prompts.append(p)
        turn_ids.append(ids)
        trims.append(trimmed)
    replies: list[ChatReply] = [None] * len(sessions)  # type: ignore[list-item]
    bs = opts.batch_size
    for i in range(0, len(sessions), bs):
        chunk = slice(i, i + bs)
        cb = None if on_token is None else (lambda b, t, i=i: on_token(i + b, t))
        g = engine(omni)(omni.model, omni.vocab, prompts[chunk], opts,
                         seeds=[s.turn_seed() for s in sessions[chunk]], on_token=cb)
        for k, toks in enumerate(g.tokens):
            replies[i + k] = reply_from_tokens(omni, toks, opts)
    for s, ids, r, tr in zip(sessions, turn_ids, replies, trims):
        s.commit(ids, r.tokens)
        r.trimmed = tr
    return replies
