"""Training clips for the speech codec: many voices, many words, the distortions of real recordings.

A codec trained only on the corpus's espeak-ng voices cannot pass a human voice through (docs/default-model.md,
"Codec variants"). ``write_codec_corpus`` renders clips of training sentences and of random word strings, each said
by a voice drawn from every installed engine (``voices.list_voices``, the held-out voices left out), then put
through a random ``augment`` chain (speed, pitch, reverberation, noise at 10-30 dB SNR, telephone band, level).
The clip list and every clip are fixed by the seed; the manifest lines are ``{"id", "audio", "voice", "text",
"augment"}``, which ``kind: codec`` training reads like any corpus manifest.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass

import numpy as np

from ..audio_io import write_wav
from ..errors import AromniError
from ..outputs import atomic_file
from . import augment as A
from . import sentences as S
from . import voices as V

# Share of clips per engine (renormalised over the engines installed); kokoro costs ~1.7 s a clip on one core.
ENGINE_SHARE = {"espeak-ng": 0.45, "flite": 0.15, "hibari": 0.15, "kokoro": 0.1, "piper": 0.15}
HELDOUT_VOICES = ("kokoro:jf_gongitsune", "flite:rms")  # never in codec training: synthetic held-out voices


@dataclass(frozen=True)
class CodecCorpusConfig:
    n_clips: int = 3000
    seed: int = 0
    sample_rate: int = 16000
    word_share: float = 0.5           # clips that say a random word string instead of a corpus sentence
    words: tuple = (4, 12)            # words in such a string
    augment_share: float = 0.75       # clips put through an augment chain (the rest stay clean)
    heldout_voices: tuple = HELDOUT_VOICES


def lexicon_words() -> list[str]:
    """Plain lower-case words (2-10 letters) of the US English lexicon shipped with ``hibari`` (misaki's gold
    dictionary, Apache-2.0); empty when hibari is not installed."""
    try:
        import hibari
    except ImportError:
        return []
    path = os.path.join(os.path.dirname(hibari.__file__), "assets", "lexicon_us_gold.json.gz")
    if not os.path.exists(path):
        return []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        words = json.load(f)
    return sorted(w for w in words if w.isalpha() and w.islower() and w.isascii() and 2 <= len(w) <= 10)


def plan(cfg: CodecCorpusConfig, voices: list[V.Voice], texts: list[str], words: list[str]) -> list[dict]:
    """The clip list: one dict per clip (voice id, text, speed, augment seed or None), fixed by ``cfg.seed``."""
    held = set(cfg.heldout_voices)
    by_engine: dict[str, list[V.Voice]] = {}
    for v in voices:
        if v.id not in held:
            by_engine.setdefault(v.engine, []).append(v)
    engines = sorted(by_engine)
    if not engines:
        raise AromniError("codec corpus: no voices installed (espeak-ng at least; see docs/default-model.md)")
    if not texts:
        raise AromniError("codec corpus: no sentences")
    share = np.array([ENGINE_SHARE.get(e, 0.1) for e in engines])
    share = share / share.sum()
    rng = np.random.default_rng([cfg.seed, 23])
    out = []
    for i in range(cfg.n_clips):
        e = engines[int(rng.choice(len(engines), p=share))]
        v = by_engine[e][int(rng.integers(len(by_engine[e])))]
        if words and rng.random() < cfg.word_share:
            k = int(rng.integers(cfg.words[0], cfg.words[1] + 1))
            text = " ".join(words[int(j)] for j in rng.integers(len(words), size=k))
        else:
            text = texts[int(rng.integers(len(texts)))]
        speed = round(float(rng.uniform(0.85, 1.2)), 3)
        aug = int(rng.integers(2**31)) if rng.random() < cfg.augment_share else None
        out.append({"id": f"codec-{i:06d}", "voice": v.id, "text": text, "speed": speed, "augment_seed": aug})
    return out


def render(item: dict, sample_rate: int) -> np.ndarray:
    """One planned clip -> float32 samples (said, then through its augment chain)."""
    wav = V.synthesize(item["voice"], item["text"], sample_rate, speed=item["speed"], seed=item["augment_seed"] or 0)
    if item["augment_seed"] is None:
        return wav
    return A.augment(wav, sample_rate, item["augment_seed"])[0]


def chain_of(item: dict) -> dict:
    """The augment chain ``render`` applies to a planned clip (drawn from its seed, as ``augment.augment`` does)."""
    if item["augment_seed"] is None:
        return {}
    return A.draw(np.random.default_rng(item["augment_seed"])).to_dict()


def write_codec_corpus(out_dir: str, cfg: CodecCorpusConfig = CodecCorpusConfig(), *, quiet: bool = False) -> str:
    """Render the clips into ``out_dir/wav/`` and write ``out_dir/train.jsonl``; clips already there are kept
    (an interrupted run resumes: each clip is written all or nothing). Returns the manifest path."""
    train, _ = S.split_sentences(cfg.seed)
    items = plan(cfg, V.list_voices(), train, lexicon_words())
    os.makedirs(os.path.join(out_dir, "wav"), exist_ok=True)
    lines = []
    for n, it in enumerate(items):
        rel = os.path.join("wav", it["id"] + ".wav")
        path = os.path.join(out_dir, rel)
        if not os.path.exists(path):
            write_wav(path, render(it, cfg.sample_rate), cfg.sample_rate)
        lines.append({"id": it["id"], "task": "codec", "split": "train", "audio": rel, "voice": it["voice"],
                      "text": it["text"], "speed": it["speed"], "augment": chain_of(it)})
        if not quiet and (n + 1) % 100 == 0:
            print(f"codec corpus: {n + 1}/{len(items)} clips", flush=True)
    manifest = os.path.join(out_dir, "train.jsonl")
    with atomic_file(manifest) as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines).encode())
    return manifest
