"""Task API on top of the decoding engine: tts, asr, caption, t2i, s2i (multi-turn chat: chat.py).

Seeds: row i of a task call is decoded with its own generator seeded ``seed + i`` (i counts prompts in input
order, after long-input splitting), so batch size and batch composition never change a row's output.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from . import rerank
from .bundle import Omni
from .codec_fit import encode_with_error
from .confidence import Answer, answer_logprobs, rules, summarize, why_low
from .decoding import DecodeOptions, options_for, with_model_defaults
from .checks import check_number
from .errors import AromniError, InputError
from .levels import no_speech
from .media import decode_images as _decode_images, image_codes_with_error, need as _need
from .media import speech_codes as _speech_codes
from .prompts import PromptContext, asr_prompt, caption_prompt, s2i_prompt, t2i_prompt, tts_prompt
from .rerank import best_of
from .rows import base_seed, decode_rows, decode_text, engine
from .tokens import image_codes_of, parse_response, whole_image
from .segmenting import split_at_pauses, split_sentences, split_words

ASR_WINDOW_S = 20.0  # longest audio window per ASR prompt (the context may force shorter ones)


@dataclass
class TTSResult:
    wav: np.ndarray  # mono float32 at omni.speech.sample_rate
    codes: np.ndarray  # speech codes (int64)
    stats: dict  # first_audio_s, tokens_per_s, rtf, audio_s, tokens, sentences (decodes: pieces with chunk_words)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def model_options(omni: Omni, opts: DecodeOptions | None, task: str) -> DecodeOptions:
    """``opts`` (default: ``task``'s) completed with the model's own decoding defaults (bundle "decode")."""
    return with_model_defaults(opts or options_for(task), omni.decode)


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


# ----------------------------------------------------------------------------------------------
# TTS
# ----------------------------------------------------------------------------------------------
def speech_pieces(text: str, chunk_words: int = 0) -> list[str]:
    """What one TTS decode speaks: the text's sentences, or with ``chunk_words`` their pieces of at most that
    many words (a small model that finishes long prompts as training did still reads a few words right)."""
    return [p for s in split_sentences(text) for p in split_words(s, chunk_words)]



def piece_options(opts: DecodeOptions, codes_per_s: float) -> DecodeOptions:
    """With ``chunk_words``, every piece's speech span is capped at ``opts.piece_seconds`` (base, per word)
    seconds for a piece of ``chunk_words`` words, the longest a piece can be (a piece that does not stop would
    otherwise run to ``max_speech_tokens``, 25 s), unless the caller set ``max_speech_tokens``. Caps of this
    size or tighter change little (docs/default-model.md, D12)."""
    if not opts.chunk_words or "max_speech_tokens" in opts.explicit:
        return opts
    base, per_word = opts.piece_seconds
    cap = math.ceil(codes_per_s * (base + per_word * opts.chunk_words))
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
                emit(dec.push([c]))  # noqa: B023 - called within this iteration

        if opts.candidates > 1:  # the best of N is known only at the end: no streaming within a sentence
            rows, gens = best_of(omni, [prompt], opts, s0 + i, rerank.speech_scorer(omni, ctx, [sent]))
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
    rows, gens = best_of(omni, prompts, opts, seed, rerank.speech_scorer(omni, ctx, sentences))
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
    for res in out:
        res.stats["rtf"] = total / audio_total if audio_total else None
    return out


# ----------------------------------------------------------------------------------------------
# ASR, caption
# ----------------------------------------------------------------------------------------------
def asr_windows(omni: Omni, wav: np.ndarray, opts: DecodeOptions, window_s: float = ASR_WINDOW_S) -> list[np.ndarray]:
    """Split one clip into windows, one per utterance (cut in the pauses, see ``split_at_pauses``), each short
    enough that its prompt leaves room for a transcript in the model's context."""
    sp = omni.speech
    rate = sp.sample_rate / sp.hop  # codes per second
    base = len(asr_prompt(PromptContext.of(omni), []))
    ctx = omni.model.cfg.max_seq_len
    reserve = min(opts.max_new_tokens, max(32, ctx // 4))
    max_codes = min(int(window_s * rate), ctx - base - reserve)
    if max_codes < 1:
        raise AromniError(f"the model's context ({ctx} tokens) leaves no room for audio in an ASR prompt")
    return [wav[a:b] for a, b in split_at_pauses(wav, sp.sample_rate, max_codes / rate)]


def asr(omni: Omni, wavs: list[np.ndarray], opts: DecodeOptions | None = None, seed: int | None = None,
        window_s: float = ASR_WINDOW_S) -> list[str]:
    """Speech -> text, one string per clip (see ``asr_answers``)."""
    return [a.text for a in asr_answers(omni, wavs, opts, seed, window_s)]


def asr_answers(omni: Omni, wavs: list[np.ndarray], opts: DecodeOptions | None = None, seed: int | None = None,
                window_s: float = ASR_WINDOW_S) -> list[Answer]:
    """Speech -> text with confidence, one answer per clip. Long clips are cut at silences into windows that are
    transcribed as one batch and joined; a clip's confidence covers the tokens of all its windows, its codec error
    is the windows' mean weighted by their length. Windows without speech (``levels.no_speech``: silence, a
    tone, steady noise, static in bursts) are not transcribed; a clip with none but those gets an empty text
    and ``no_speech``."""
    _need(omni, "speech", "asr")
    _need(omni, "text", "asr")
    opts = model_options(omni, opts, "asr")
    ctx = PromptContext.of(omni)
    sr = omni.speech.sample_rate
    owner, prompts = [], []
    fit = np.zeros((len(wavs), 2))  # per clip: sum of window length * codec error, total length (0: no error)
    silent = [""] * len(wavs)  # per clip: why it holds no speech ("" when some window may)
    for k, wav in enumerate(wavs):
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        if wav.size == 0:
            raise InputError(f"clip {k + 1} holds no samples")
        silent[k] = no_speech(wav, sr)
        windows = [] if silent[k] else asr_windows(omni, wav, opts, window_s)
        for w in windows:
            why = no_speech(w, sr) if w.size < wav.size else ""  # the whole clip was checked above
            if why:
                silent[k] = silent[k] or why
                continue
            owner.append(k)
            codes, e = encode_with_error(omni.speech, w)
            prompts.append(asr_prompt(ctx, codes))
            if e is not None:
                fit[k] += (w.size * e, w.size)
    heard = set(owner)
    silent = ["" if k in heard else why for k, why in enumerate(silent)]
    rows, gens = decode_rows(omni, prompts, opts, seed)
    texts: list[list[str]] = [[] for _ in wavs]
    lps: list[list[float]] = [[] for _ in wavs]
    for o, r, lp in zip(owner, rows, _row_logprobs(gens, rows)):
        t = decode_text(omni, r)
        if t:
            texts[o].append(t)
        lps[o] += answer_logprobs(r, lp, omni.vocab)
    errors = [float(a / n) if n else None for a, n in fit]
    answers = _answers(omni, "asr", [" ".join(t) for t in texts], lps, [{"codec_error": e} for e in errors])
    return [replace(a, why_no_speech=why) for a, why in zip(answers, silent)]


def _row_logprobs(gens: list, rows: list[list[int]]) -> list[list[float | None]]:
    """Per row, its tokens' log-probabilities (an engine that records none: no evidence, empty lists)."""
    out = [lp for g in gens for lp in (g.logprobs or [[] for _ in g.tokens])]
    return out if len(out) == len(rows) else [[] for _ in rows]


def _answers(omni: Omni, task: str, texts: list[str], lps: list[list[float]],
             fits: list[dict[str, float | None]] | None = None) -> list[Answer]:
    """Answers with confidence: ``fits`` per text the input's fit measures (``codec_error``, ``image_error``)."""
    limits = rules(task, omni.source)
    fits = fits or [{} for _ in texts]
    return [Answer(t, c, why_low(c, limits)) for t, c in
            zip(texts, (summarize(lp, **f) for lp, f in zip(lps, fits)))]


def caption(omni: Omni, images: list, opts: DecodeOptions | None = None, seed: int | None = None) -> list[str]:
    """Images (PIL, paths or bytes) -> one caption each."""
    return [a.text for a in caption_answers(omni, images, opts, seed, image_error=False)]


def caption_answers(omni: Omni, images: list, opts: DecodeOptions | None = None,
                    seed: int | None = None, image_error: bool | None = None) -> list[Answer]:
    """Images (PIL, paths or bytes) -> one caption each, with confidence. ``image_error``: measure each image's
    tokenizer round-trip error (one decoder pass per image); None: where the model's calibrated rules use it."""
    _need(omni, "image", "caption")
    _need(omni, "text", "caption")
    opts = model_options(omni, opts, "caption")
    ctx = PromptContext.of(omni)
    if image_error is None:
        image_error = any(m == "image_error" for m, _, _ in rules("caption", omni.source))
    codes, errors = image_codes_with_error(omni, images, measure=image_error)
    prompts = [caption_prompt(ctx, c.tolist()) for c in codes]
    rows, gens = decode_rows(omni, prompts, opts, seed)
    lps = [answer_logprobs(r, lp, omni.vocab) for r, lp in zip(rows, _row_logprobs(gens, rows))]
    return _answers(omni, "caption", [decode_text(omni, r) for r in rows], lps,
                    [{"image_error": e} for e in errors])


# ----------------------------------------------------------------------------------------------
# T2I, S2I
# ----------------------------------------------------------------------------------------------
def t2i(omni: Omni, texts: list[str], n: int = 1, opts: DecodeOptions | None = None, seed: int | None = None) -> list:
    """Texts -> ``n`` PIL images each (prompt-major order); row ``i * n + j`` uses seed ``seed + i * n + j``.
    With ``n > 1`` the images are sampled even where the model's own default is argmax (``n`` argmax drawings of
    a prompt are one image ``n`` times); an explicit ``image_greedy`` keeps argmax."""
    _need(omni, "image", "t2i")
    _need(omni, "text", "t2i")
    check_number("n", n)
    opts = model_options(omni, opts, "t2i")
    if n > 1 and opts.image_greedy and "image_greedy" not in opts.explicit:
        opts = replace(opts, image_greedy=False)
    v, ctx = omni.vocab, PromptContext.of(omni)
    prompts = []
    limit = min(omni.model.cfg.max_seq_len, (opts.max_total_tokens or 1 << 30)) - (v.image_tokens + 1)
    for text in texts:
        if not text.strip():
            raise InputError("empty text prompt")
        prompts += [fit_prompt(lambda t: t2i_prompt(ctx, t) + [v.boi], text, limit)] * n
    rows, _ = best_of(omni, prompts, opts, seed, rerank.image_scorer(omni, ctx, [t for t in texts for _ in range(n)]))
    return _decode_images(omni, [image_codes_of(r, v) for r in rows])


def s2i(omni: Omni, wavs: list[np.ndarray], opts: DecodeOptions | None = None, seed: int | None = None) -> list[tuple]:
    """Speech -> (transcript, image): ``<-Ins->`` transcript (greedy) ``<-Res->`` then an image (forced). A clip
    without speech is refused (``media.speech_codes``)."""
    _need(omni, "speech", "s2i")
    _need(omni, "image", "s2i")
    opts = model_options(omni, opts, "s2i")
    v, ctx = omni.vocab, PromptContext.of(omni)
    prompts = [s2i_prompt(ctx, _speech_codes(omni, w, f"clip {k + 1}")) + ([] if opts.compat else [v.ins])
               for k, w in enumerate(wavs)]
    if not opts.compat and prompts:
        room = min(opts.max_new_tokens, omni.model.cfg.max_seq_len - max(len(p) for p in prompts))
        text_room = room - (v.image_tokens + 3)  # <-Res->, <boi>, codes, <eoi>
        if text_room < 1:
            raise InputError("audio too long for speech-to-image in this model's context")
        cap = min(opts.max_text_tokens or text_room, text_room)
        opts = opts.replace(max_text_tokens=cap, text_cap_then=opts.text_cap_then or "res")
    rows, _ = best_of(omni, prompts, opts, seed, rerank.s2i_scorer(omni, ctx))
    out = []
    for r in rows:
        parsed = parse_response(r, v)
        img = whole_image(parsed["images"][0] if parsed["images"] else [], v)
        out.append((rerank.transcript_text(omni, parsed), img, bool(parsed["images"])))
    images = _decode_images(omni, [c for _, c, _ in out]) if out else []
    return [(text, im) for (text, _, _), im in zip(out, images)]
