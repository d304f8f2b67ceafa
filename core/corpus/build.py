"""Build the synthetic tri-modal corpus: manifests, images and speech, reproducibly from a seed.

Layout of ``out_dir``: ``train.jsonl``, ``heldout.jsonl``, ``corpus.json`` (summary), ``img/*.png``,
``wav/*.wav`` (content-addressed, so a rebuild into the same folder reuses them).

Every manifest line has the keys ``id task split text image audio voice speed attrs`` (null where a task
has no such part; paths relative to the manifest), plus ``turns`` for chats and ``voice_heldout`` for
held-out lines with speech input. Per task:

- tts: ``text`` (sometimes in written form, "Hello world!") -> ``audio`` in the one output voice.
- asr: ``audio`` (input voices) -> ``text`` (normal form: lower case, no punctuation); optional lines flagged
  ``joined`` hear the output voice say a training text a few words at a time (``n_asr_joined``).
- caption: ``image`` -> ``text`` (canonical caption). t2i: ``text`` (caption, sometimes a paraphrase) -> ``image``.
- s2i: ``audio`` (a spoken caption) -> ``text`` (its transcript) + ``image``  ("transcribe and draw").
- text: plain ``text``.
- chat: ``turns``: ``{"role": "user"|"assistant", "text"?, "image"?, "attrs"?, "audio"?, "transcript"?,
  "voice"?, "speed"?}``. A turn's ``audio`` says its ``transcript``; after a spoken user turn the assistant's
  response is meant to follow ``<-Ins->`` transcript ``<-Res->`` (docs/formats.md, "Prompt templates").

``attrs`` (scenes.py) states what an image shows or a caption says. Every image keeps the scene's pixel jitter
unless ``canonical_targets`` is set: then the images the model is taught to draw (t2i, s2i, chat drawings) are
drawn without it (one right drawing per prompt and background) while the images it reads keep it. For the default
model that was worse (the LM memorised the fixed drawings; docs/default-model.md), so it is off by default.
Held-out: scenes using any held-out (shape, colour, position) triple, held-out sentences, and the held-out
voice (``voice_heldout: true``); nothing held out ever appears in train.jsonl.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..audio_io import load_audio, write_wav
from ..segmenting import split_words
from . import everyday as E
from . import phrasing as F
from . import scenes as S
from . import sentences as T
from . import speech as P
from . import voices as V

MANIFESTS = ("train.jsonl", "heldout.jsonl")
LINE_KEYS = ("id", "task", "split", "text", "image", "audio", "voice", "speed", "attrs")


@dataclass(frozen=True)
class CorpusConfig:
    n_scenes: int = 3000          # train scenes; each gives a caption line and a t2i line
    n_t2i: int = 0                # further t2i-only train scenes
    n_s2i: int = 1500             # train spoken captions with their image (each also an asr line)
    asr_per_sentence: int = 3     # input voices per training sentence
    n_tts_captions: int = 600     # captions spoken in the output voice
    n_tts_drills: int = 0         # output-voice readings of random training words (drill_texts; docs/default-model.md)
    n_tts_chunks: int = 0         # output-voice readings of short pieces of training texts (chunk_texts)
    n_asr_joined: int = 0         # asr of training texts said piece by piece in the output voice (joined_texts)
    joined_words: int = 3         # words per piece of those lines (the decode option chunk_words they mirror)
    joined_mixed: float = 0.0     # share of them joining pieces of different texts (worse: docs/default-model.md)
    n_chat: int = 600
    heldout_scenes: int = 300
    heldout_s2i: int = 150        # each spoken by a seen voice and by the held-out voice
    n_chat_heldout: int = 30
    max_sentences: int | None = None  # cap the training sentences (tiny builds); held-out scales along
    two_prob: float = 0.2         # share of two-object scenes
    heldout_combo_frac: float = 0.125
    heldout_sentence_frac: float = 0.1
    paraphrase_prob: float = 0.3  # t2i / s2i inputs that use a caption paraphrase
    written_prob: float = 0.3     # tts inputs in written form
    image_size: int = 64
    canonical_targets: bool = False  # images to be generated are drawn without jitter (worse: docs/default-model.md)
    world: str = "shapes"         # sentences: "shapes" (sentences.py) or "wide" (+ everyday.py: numbers, letters, ...)
    voices: str = "espeak"        # speech.VOICE_SETS: "espeak", or "many" (neural output voice, many input voices)
    phrasing_prob: float = 0.0    # t2i / s2i training inputs in a free phrasing (phrasing.py) instead
    heldout_phrasings: int = 0    # held-out t2i lines of held-out scenes in a held-out phrasing
    spoken_phrasing: bool = True  # s2i (and its asr lines) in free phrasings too; False: written t2i requests only


PRESETS = {
    # the bundle speaks three words at a time (decode chunk_words 3): pieces to say, joined pieces to hear; half
    # of the written scene requests in free phrasings, 150 held-out ones in held-out frames; spoken requests stay
    # captions (the recogniser otherwise learns to hear a request frame in front of every caption)
    "default": CorpusConfig(n_tts_chunks=3000, n_asr_joined=1500, phrasing_prob=0.5, heldout_phrasings=150,
                            spoken_phrasing=False),
    # the wider world: everyday lines, a neural output voice and many input voices
    "wide": CorpusConfig(n_tts_chunks=3000, n_asr_joined=1500, world="wide", voices="many", phrasing_prob=0.5,
                         heldout_phrasings=150, heldout_s2i=150),
    "ci": CorpusConfig(n_scenes=24, n_s2i=8, asr_per_sentence=1, n_tts_captions=4, n_chat=6,
                       heldout_scenes=8, heldout_s2i=3, n_chat_heldout=2, max_sentences=12, n_tts_chunks=8,
                       n_asr_joined=4),
}
PRESETS["ci-wide"] = replace(PRESETS["ci"], world="wide", voices="many", phrasing_prob=0.5, heldout_phrasings=6,
                             heldout_s2i=6)  # the wide preset's parts at the ci preset's size

GREETINGS = ("hello", "good morning", "good afternoon", "good evening")
REPLIES = {g: f"{g} how can i help you" for g in GREETINGS} | {
    "hi there": "hi how can i help you",
    "hello there": "hello how can i help you",
    "hello world": "hello how can i help you",
    "how are you": "i am fine thank you",
    "what is your name": "my name is omni",
    "thank you": "you are welcome",
    "thank you very much": "you are welcome",
    "goodbye": "goodbye see you later",
    "see you later": "see you later",
    "good night": "good night",
}
DRAW_REQUESTS = ("draw {}", "please draw {}", "can you draw {}")
DESCRIBE_QUESTIONS = ("what is in this picture", "describe this picture", "what do you see")


def _line(task: str, split: str, **kw) -> dict:
    d: dict[str, Any] = {k: None for k in LINE_KEYS}
    d.update(task=task, split=split, **kw)
    return d


class _Builder:
    """Collects lines, images and speech jobs for one split; speech paths are filled in after synthesis."""

    def __init__(self, out_dir: str, split: str, cfg: CorpusConfig, sample_rate: int, speech: bool):
        self.out, self.split, self.cfg, self.sr, self.speech = out_dir, split, cfg, sample_rate, speech
        self.voices = P.VOICE_SETS[cfg.voices]
        self.lines: list[dict] = []
        self.images: list[tuple[str, dict]] = []
        self.jobs: set[P.SpeechJob] = set()
        self.joins: dict[str, tuple[str, ...]] = {}  # joined clip -> its pieces' clips (paths under out_dir)
        self.counters: dict[str, int] = {}

    def image(self, attrs: dict, kind: str) -> str:
        n = self.counters.get(kind, 0)
        self.counters[kind] = n + 1
        rel = f"img/{self.split}_{kind}_{n:05d}.png"
        self.images.append((rel, attrs))
        return rel

    def audio(self, text: str, voice: P.Voice) -> dict:
        job = P.SpeechJob(text, voice)
        self.jobs.add(job)
        return {"audio": "wav/" + P.wav_name(text, voice, self.sr), "voice": voice.name, "speed": voice.speed}

    def joined_audio(self, pieces: list[str], voice: P.Voice) -> dict:
        """One clip of ``pieces`` said one after another (each its own espeak-ng clip, as chunked TTS says them)."""
        parts = tuple(self.audio(p, voice)["audio"] for p in pieces)
        rel = "wav/j" + hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:15] + ".wav"
        self.joins[rel] = parts
        return {"audio": rel, "voice": voice.name, "speed": voice.speed}

    def add(self, task: str, **kw) -> dict:
        line = _line(task, self.split, **kw)
        self.lines.append(line)
        return line


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _clean(attrs: dict) -> dict:
    """attrs for a manifest: a copy (offsets kept, so draw(attrs) reproduces the image)."""
    return json.loads(json.dumps(attrs))


def _target(b: _Builder, attrs: dict, kind: str, drawn: str | None = None) -> tuple[str, dict]:
    """(image path, attrs) of an image the model is taught to draw; ``drawn``: the scene's image already made
    (used as is unless ``canonical_targets`` asks for a jitter-free copy)."""
    if b.cfg.canonical_targets:
        attrs, drawn = S.without_jitter(attrs), None
    return drawn or b.image(attrs, kind), _clean(attrs)


def _spoken_caption(rng, attrs, paraphrase_prob, phrasing_prob: float = 0.0) -> str:
    if phrasing_prob and rng.random() < phrasing_prob:
        return F.phrase(attrs, rng)
    v = int(rng.integers(1, S.N_VARIANTS)) if rng.random() < paraphrase_prob else 0
    return S.caption(attrs, v)


def _heldout_voice(rng, b: "_Builder") -> P.Voice:
    """A held-out voice for one line (with one held-out voice no random draw, as the espeak-only corpus makes)."""
    hv = b.voices.heldout
    return hv[0] if len(hv) == 1 else _pick(rng, hv)


def _scene_tasks(b: _Builder, rng, combos: set, n: int, heldout: bool) -> None:
    for _ in range(n):
        a = S.sample_scene(rng, b.cfg.two_prob, combos)
        img = b.image(a, "scene")
        b.add("caption", text=S.caption(a), image=img, attrs=_clean(a))
        t2i_text = S.caption(a) if heldout else _spoken_caption(rng, a, b.cfg.paraphrase_prob, b.cfg.phrasing_prob)
        img, attrs = _target(b, a, "t2i", drawn=img)
        extra = {"group": "canonical"} if heldout and b.cfg.heldout_phrasings else {}
        b.add("t2i", text=t2i_text, image=img, attrs=attrs, **extra)


def _phrasing_tasks(b: _Builder, rng, combos: set, n: int) -> None:
    """Held-out t2i lines in held-out phrasings (eval group "held-out phrasing")."""
    for _ in range(n):
        a = S.sample_scene(rng, b.cfg.two_prob, combos)
        img, attrs = _target(b, a, "t2i")
        b.add("t2i", text=F.phrase(a, rng, heldout=True), image=img, attrs=attrs, group="held-out phrasing")


def _t2i_tasks(b: _Builder, rng, combos: set, n: int) -> None:
    for _ in range(n):
        a = S.sample_scene(rng, b.cfg.two_prob, combos)
        img, attrs = _target(b, a, "t2i")
        b.add("t2i", text=_spoken_caption(rng, a, b.cfg.paraphrase_prob, b.cfg.phrasing_prob), image=img,
              attrs=attrs)


def _s2i_tasks(b: _Builder, rng, combos: set, n: int, heldout: bool) -> None:
    voices = b.voices.input
    for _ in range(n):
        a = S.sample_scene(rng, b.cfg.two_prob, combos)
        img, attrs = _target(b, a, "s2i")
        said = S.caption(a) if heldout else _spoken_caption(rng, a, b.cfg.paraphrase_prob,
                                                             b.cfg.phrasing_prob if b.cfg.spoken_phrasing else 0.0)
        speakers = [(_pick(rng, voices), False)] + ([(_heldout_voice(rng, b), True)] if heldout else [])
        for voice, vh in speakers:
            sp = b.audio(said, voice)
            extra = {"voice_heldout": vh} if heldout else {}
            b.add("s2i", text=said, image=img, attrs=attrs, **sp, **extra)
            b.add("asr", text=said, attrs=_clean(a), **sp, **extra)


def _sentence_tasks(b: _Builder, rng, sents: list[str], heldout: bool) -> None:
    voices = b.voices.input
    for s in sents:
        b.add("text", text=s)
        if not b.speech:
            continue
        tts_text = T.written(s) if (not heldout and rng.random() < b.cfg.written_prob) else s
        b.add("tts", text=tts_text, **b.audio(tts_text, b.voices.output))
        if heldout:
            for voice, vh in ((_pick(rng, voices), False), (_heldout_voice(rng, b), True)):
                b.add("asr", text=s, voice_heldout=vh, **b.audio(s, voice))
        else:
            for k in rng.permutation(len(voices))[:b.cfg.asr_per_sentence]:
                b.add("asr", text=s, **b.audio(s, voices[int(k)]))


def _tts_caption_tasks(b: _Builder, rng, combos: set, n: int) -> None:
    for _ in range(n):
        a = S.sample_scene(rng, b.cfg.two_prob, combos)
        text = S.caption(a)
        b.add("tts", text=text, attrs=_clean(a), **b.audio(text, b.voices.output))


DRILL_WORDS = (3, 8)  # words per drill line, both ends included


def caption_words() -> list[str]:
    """Every word a scene caption can use (canonical form)."""
    words = {"a", "and", *S.SHAPES, *S.COLOURS, *S.SIZES}
    for where in S.WHERE.values():
        words.update(where.split())
    return sorted(words)


def _holds_held_out(held_combos: AbstractSet, held_sents: Sequence[str]) -> Callable[[list[str]], bool]:
    """``check(words) -> bool``: the words hold the shape, colour and position word of a held-out combination
    together, or a held-out sentence."""
    pos_word = {p: S.WHERE[p].split()[-1] for p in S.POSITIONS}
    banned = [{s, c, pos_word[p]} for s, c, p in sorted(held_combos)]

    def check(words: list[str]) -> bool:
        ws, text = set(words), " ".join(words)
        return any(b <= ws for b in banned) or any(h in text for h in held_sents)
    return check


def drill_texts(rng, n: int, sents: list[str], held_combos: set, held_sents: list[str]) -> list[str]:
    """``n`` lines of random words: half from the captions' words, half from every training word.

    TTS of a template caption can be learnt without reading its last words: in training, a shape and colour
    held out at one position are always followed by the other positions ("green star on the" -> "left").
    Lines whose word order predicts nothing were meant to make the model say each word it reads (measured on
    the default recipe: they did not; docs/default-model.md). A line never holds the shape, colour and position
    word of a held-out combination together, nor a held-out sentence.
    """
    cap = caption_words()
    every = sorted(set(cap) | {w for s in sents for w in s.split()})
    held_out = _holds_held_out(held_combos, held_sents)
    out: list[str] = []
    while len(out) < n:
        pool = cap if rng.random() < 0.5 else every
        k = int(rng.integers(DRILL_WORDS[0], DRILL_WORDS[1] + 1))
        words = [pool[int(i)] for i in rng.integers(len(pool), size=k)]
        if not held_out(words):
            out.append(" ".join(words))
    return out


CHUNK_SIZES = (0.2, 0.4, 0.4)  # probabilities of a piece of 1, 2, 3 words (the bundle speaks <= 3 at a time)


def chunk_texts(rng, n: int, combos: set, two_prob: float, sents: list[str], written_prob: float,
                held_combos: set, held_sents: list[str]) -> list[str]:
    """``n`` pieces of 1..3 consecutive words cut at random places from training TTS texts (canonical captions
    of ``combos`` and ``sents``, some in written form), every piece of a cut text in order.

    TTS of a whole held-out caption fails at its last word: training never put it after its prefix, and the LM
    finishes the prefix as training did. Spoken a few words at a time (decode option ``chunk_words``) every
    piece is one training said, so the model must learn to say short pieces and stop. A piece never holds the
    shape, colour and position word of a held-out combination together, nor a held-out sentence.
    """
    held_out = _holds_held_out(held_combos, held_sents)
    out: list[str] = []
    while len(out) < n:
        if rng.random() < 0.5:
            text = S.caption(S.sample_scene(rng, two_prob, combos))
        else:
            s = _pick(rng, sents)
            text = T.written(s) if rng.random() < written_prob else s
        words, i = text.split(), 0
        while i < len(words) and len(out) < n:
            k = 1 + int(rng.choice(len(CHUNK_SIZES), p=CHUNK_SIZES))
            piece = words[i:i + k]
            i += k
            if not held_out(piece):
                out.append(" ".join(piece))
    return out


def _tts_extra_tasks(b: _Builder, texts: list[str], kind: str) -> None:
    """Output-voice TTS lines flagged ``kind`` (``drill`` / ``chunk``: the mix counts them apart)."""
    for text in texts:
        b.add("tts", text=text, **{kind: True}, **b.audio(text, b.voices.output))


def joined_texts(rng, n: int, combos: set, two_prob: float, sents: list[str], words: int, mixed: float = 0.0,
                 held_combos: AbstractSet = frozenset(), held_sents: Sequence[str] = ()) -> list[list[str]]:
    """``n`` lines for joined-piece ASR, each a list of pieces of at most ``words`` words: a training text
    (canonical caption of ``combos`` or a sentence of ``sents``, half and half) split as ``chunk_words`` splits
    it, or, for a ``mixed`` share of the lines, 2-4 pieces each cut that way from a different random training
    text (no piece holding held-out content).

    With ``chunk_words`` the TTS says a text a few words at a time and the clips are joined; a recogniser that
    only heard whole utterances maps such speech to the training sentence it sounds most like, and one that
    only heard whole training texts joined maps an unseen text to a training one (docs/default-model.md)."""
    held_out = _holds_held_out(held_combos, held_sents)

    def text() -> str:
        return S.caption(S.sample_scene(rng, two_prob, combos)) if rng.random() < 0.5 else _pick(rng, sents)

    out: list[list[str]] = []
    for _ in range(n):
        if mixed <= 0 or rng.random() >= mixed:  # (no draw at 0: the lines of builds before this option)
            out.append(split_words(text(), words))
            continue
        line: list[str] = []
        for _ in range(int(rng.integers(2, 5))):
            while True:
                pieces = split_words(text(), words)
                piece = pieces[int(rng.integers(len(pieces)))]
                if not held_out(piece.split()):
                    break
            line.append(piece)
        out.append(line)
    return out


def _asr_joined_tasks(b: _Builder, lines: list[list[str]]) -> None:
    for pieces in lines:
        b.add("asr", text=" ".join(pieces), joined=True, **b.joined_audio(pieces, b.voices.output))


def write_joins(out_dir: str, joins: dict[str, tuple[str, ...]], sample_rate: int) -> None:
    """Write each joined clip (cached like the speech files) from its synthesised pieces."""
    for rel, parts in sorted(joins.items()):
        path = os.path.join(out_dir, rel)
        if os.path.exists(path):
            continue
        wav = np.concatenate([load_audio(os.path.join(out_dir, p), sample_rate) for p in parts])
        write_wav(f"{path}.tmp", wav, sample_rate)
        os.replace(f"{path}.tmp", path)


def _chat_tasks(b: _Builder, rng, combos: set, sents: list[str], n: int) -> None:
    voices = b.voices.input
    kinds = ("draw", "describe", "say", "spoken_draw") if b.speech else ("draw", "describe")
    for _ in range(n):
        turns: list[dict] = []
        if rng.random() < 0.5:
            g = _pick(rng, tuple(REPLIES))
            if b.speech and rng.random() < 0.5:
                sp = b.audio(g, _pick(rng, voices))
                turns.append({"role": "user", "audio": sp["audio"], "transcript": g, "voice": sp["voice"],
                              "speed": sp["speed"]})
            else:
                turns.append({"role": "user", "text": g})
            turns.append({"role": "assistant", "text": REPLIES[g]})
        for _ in range(int(rng.integers(1, 3))):
            kind = _pick(rng, kinds)
            if kind in ("draw", "spoken_draw", "describe"):
                a = S.sample_scene(rng, b.cfg.two_prob, combos)
                img, attrs = _target(b, a, "chat") if kind != "describe" else (b.image(a, "chat"), _clean(a))
            if kind == "draw":
                req = _pick(rng, DRAW_REQUESTS).format(S.caption(a, _pick(rng, (0, 0, 3))))
                turns += [{"role": "user", "text": req},
                          {"role": "assistant", "image": img, "attrs": attrs}]
            elif kind == "spoken_draw":
                said = S.caption(a)
                sp = b.audio(said, _pick(rng, voices))
                turns += [{"role": "user", "audio": sp["audio"], "transcript": said, "voice": sp["voice"],
                           "speed": sp["speed"]},
                          {"role": "assistant", "image": img, "attrs": attrs}]
            elif kind == "describe":
                turns += [{"role": "user", "image": img, "attrs": _clean(a),
                           "text": _pick(rng, DESCRIBE_QUESTIONS)},
                          {"role": "assistant", "text": S.caption(a)}]
            else:  # say
                s = _pick(rng, sents)
                sp = b.audio(s, b.voices.output)
                turns += [{"role": "user", "text": f"say {s}"},
                          {"role": "assistant", "audio": sp["audio"], "transcript": s, "voice": sp["voice"],
                           "speed": sp["speed"]}]
        b.add("chat", turns=turns)


def plan(out_dir: str, cfg: CorpusConfig, seed: int, sample_rate: int, speech: bool) -> tuple[list[_Builder], dict]:
    """All lines, images and speech jobs of a build (no file is written)."""
    held_combos = S.heldout_combos(seed, cfg.heldout_combo_frac)
    train_combos = set(S.all_combos()) - held_combos
    split = {"shapes": T.split_sentences, "wide": E.split_everyday}[cfg.world]
    train_sents, held_sents = split(seed, cfg.heldout_sentence_frac)
    if cfg.max_sentences is not None:
        k = max(1, round(cfg.max_sentences * len(held_sents) / len(train_sents)))
        train_sents, held_sents = train_sents[:cfg.max_sentences], held_sents[:k]

    def rng(*stream):  # one stream per part: changing one count leaves the others' draws alone
        return np.random.default_rng([seed, *stream])

    tr = _Builder(out_dir, "train", cfg, sample_rate, speech)
    _scene_tasks(tr, rng(1), train_combos, cfg.n_scenes, heldout=False)
    _sentence_tasks(tr, rng(2), train_sents, heldout=False)
    if speech:
        _s2i_tasks(tr, rng(3), train_combos, cfg.n_s2i, heldout=False)
        _tts_caption_tasks(tr, rng(4), train_combos, cfg.n_tts_captions)
    _chat_tasks(tr, rng(5), train_combos, train_sents, cfg.n_chat)
    _t2i_tasks(tr, rng(6), train_combos, cfg.n_t2i)
    # captions of every training single-object combination as plain text
    for s, c, p in sorted(train_combos):
        for z in S.SIZES:
            tr.add("text", text=S.caption({"objects": [{"shape": s, "colour": c, "size": z, "position": p}]}))
    if speech and cfg.n_tts_drills:  # last: the codec's `pick: first` clips stay those of a corpus without them
        _tts_extra_tasks(tr, drill_texts(rng(7), cfg.n_tts_drills, train_sents, held_combos, held_sents), "drill")
    if speech and cfg.n_tts_chunks:  # last too, for the same reason
        _tts_extra_tasks(tr, chunk_texts(rng(8), cfg.n_tts_chunks, train_combos, cfg.two_prob, train_sents,
                                         cfg.written_prob, held_combos, held_sents), "chunk")
    if speech and cfg.n_asr_joined:  # last too
        _asr_joined_tasks(tr, joined_texts(rng(9), cfg.n_asr_joined, train_combos, cfg.two_prob, train_sents,
                                           cfg.joined_words, cfg.joined_mixed, held_combos, held_sents))

    he = _Builder(out_dir, "heldout", cfg, sample_rate, speech)
    _scene_tasks(he, rng(11), held_combos, cfg.heldout_scenes, heldout=True)
    _phrasing_tasks(he, rng(15), held_combos, cfg.heldout_phrasings)
    _sentence_tasks(he, rng(12), held_sents, heldout=True)
    if speech:
        _s2i_tasks(he, rng(13), held_combos, cfg.heldout_s2i, heldout=True)
        _tts_caption_tasks(he, rng(14), held_combos, cfg.heldout_s2i)
    _chat_tasks(he, rng(15), held_combos, held_sents, cfg.n_chat_heldout)

    for b in (tr, he):
        for j, line in enumerate(b.lines):
            line["id"] = f"{b.split}-{j:06d}"
    info = {"heldout_combos": sorted(list(c) for c in held_combos), "train_sentences": len(train_sents),
            "heldout_sentences": len(held_sents)}
    return [tr, he], info


def build_corpus(out_dir: str, seed: int = 0, preset: str = "default", sample_rate: int = 24000,
                 speech: bool = True, workers: int = 2, progress: bool = False, **overrides) -> dict:
    """Write the corpus into ``out_dir`` and return a summary (counts, sizes, seconds).

    ``preset`` picks a CorpusConfig from PRESETS; keyword ``overrides`` replace its fields.
    ``speech=False`` leaves out everything that needs espeak-ng (tts, asr, s2i, spoken chat turns).
    """
    from tqdm import tqdm

    if preset not in PRESETS:
        raise ValueError(f"unknown corpus preset {preset!r} (known: {', '.join(PRESETS)})")
    cfg = replace(PRESETS[preset], **overrides)
    if speech:
        P.require_espeak()
    t0 = time.time()
    os.makedirs(os.path.join(out_dir, "img"), exist_ok=True)
    builders, info = plan(out_dir, cfg, seed, sample_rate, speech)

    images = [im for b in builders for im in b.images]
    for rel, attrs in tqdm(images, desc="images", unit="img", disable=not progress, leave=False):
        S.draw(attrs, cfg.image_size).save(os.path.join(out_dir, rel), optimize=False)
    t_img = time.time() - t0

    jobs = set().union(*(b.jobs for b in builders))
    if jobs:
        with tqdm(total=len(jobs), desc="speech", unit="utt", disable=not progress, leave=False) as bar:
            speak, check = (P.synthesize, P.check_voice) if cfg.voices == "espeak" else (V.corpus_speak,
                                                                                        V.corpus_check)
            P.synthesize_many(jobs, os.path.join(out_dir, "wav"), sample_rate, workers, on_done=bar.update,
                              speak=speak, check=check)
    for b in builders:
        write_joins(out_dir, b.joins, sample_rate)
    t_speech = time.time() - t0 - t_img

    for b, name in zip(builders, MANIFESTS):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            for line in b.lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")

    counts = {b.split: _task_counts(b.lines) for b in builders}
    joins = sorted({rel for b in builders for rel in b.joins})
    wav_bytes = sum(os.path.getsize(os.path.join(out_dir, "wav", P.wav_name(j.text, j.voice, sample_rate)))
                    for j in jobs) + sum(os.path.getsize(os.path.join(out_dir, rel)) for rel in joins)
    summary = {
        "seed": seed, "preset": preset, "config": asdict(cfg), "sample_rate": sample_rate, "speech": speech,
        "espeak_ng": P.espeak_version() if speech else None,
        "voices": _voices_summary(P.VOICE_SETS[cfg.voices]),
        "lines": counts, "images": len(images), "utterances": len(jobs),
        "speech_hours": round((wav_bytes - 44 * (len(jobs) + len(joins))) / 2 / sample_rate / 3600, 3),
        **info,
    }
    with open(os.path.join(out_dir, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    summary["bytes"] = _du(out_dir)
    summary["seconds"] = {"images": round(t_img, 1), "speech": round(t_speech, 1), "total": round(time.time() - t0, 1)}
    return summary


def _voices_summary(vs: P.VoiceSet) -> dict:
    """corpus.json's "voices" (the espeak-only set in its original shape: one held-out voice)."""
    d = vs.to_dict()
    if vs == P.VOICE_SETS["espeak"]:
        d["input"] = [v.name for v in vs.input[::len(P.INPUT_SPEEDS)]]
        d["heldout"] = d["heldout"][0]
    return d


def _task_counts(lines: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        out[line["task"]] = out.get(line["task"], 0) + 1
    return dict(sorted(out.items()))


def _du(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def read_manifest(path: str) -> list[dict]:
    """The lines of a manifest (paths stay relative to its folder)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
