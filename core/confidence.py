"""How sure the model was of a text answer, from the log-probabilities of the tokens it chose (like Whisper's
``avg_logprob``) and how well the input's tokenizer covers the input (ASR: the codec error, codec_fit.py;
captions: the image tokenizer's round-trip error); and the per-task rules under which an answer is flagged as
low confidence.

A model's rules are part of the model: the ``confidence`` entry of its ``aromni.json``, written by
scripts/confidence_calibration.py --write (docs/evaluation.md, "Confidence"). Each task's rules use the measures
of ``RULE_MEASURES``, with thresholds at percentiles of held-out in-domain answers so that about one in twenty
in-domain answers is flagged. For ASR these are the first token's log-probability (a small model picks a whole
corpus sentence with its first words: foreign input shows as doubt there, while the rest of a wrong sentence
follows confidently) and the codec error (speech unlike the codec's training voices fits its codebook badly);
for captions the average log-probability and the image error (a picture unlike the tokenizer's training images
decodes far from itself). A model without the entry carries the numbers in its answers but never flags one.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache

from .vocab import VocabLayout

# task -> the (Confidence field, "<" or ">") pairs a calibration sets thresholds for; any rule that holds flags
RULE_MEASURES: dict[str, tuple[tuple[str, str], ...]] = {
    "asr": (("first_logprob", "<"), ("codec_error", ">")),
    "caption": (("avg_logprob", "<"), ("image_error", ">")),
}
FIT_MEASURES = ("codec_error", "image_error")  # measures of the input, not of the answer's tokens
Rules = tuple[tuple[str, str, float], ...]
LABELS = {"avg_logprob": "average token log-probability", "first_logprob": "first token's log-probability",
          "min_logprob": "lowest token log-probability", "codec_error": "codec error",
          "image_error": "image tokenizer error"}


@dataclass(frozen=True)
class Confidence:
    """Summary of the chosen tokens of one answer (forced tokens excluded), and the input tokenizer's fit."""

    avg_logprob: float  # mean natural log-probability per token
    first_logprob: float  # the first token's
    min_logprob: float  # the least likely token's
    tokens: int  # tokens the summary covers
    codec_error: float | None = None  # speech input: relative quantisation error (codec_fit.py)
    image_error: float | None = None  # image input: tokenizer round-trip error (VQGANTokenizer.round_trip_error)

    def to_dict(self) -> dict:
        """JSON fields (log-probabilities None where no token was chosen; codec_error and image_error only where
        measured)."""
        keys = ("avg_logprob", "first_logprob", "min_logprob")
        out = {k: round(getattr(self, k), 4) if self.tokens else None for k in keys}
        for k in FIT_MEASURES:
            if getattr(self, k) is not None:
                out[k] = round(getattr(self, k), 4)
        return out


@dataclass(frozen=True)
class Answer:
    """A text answer (asr, caption) with the model's confidence in it."""

    text: str
    confidence: Confidence
    why_low: str = ""  # why the confidence is below the model's calibrated rule; "" if it is not
    why_no_speech: str | None = None  # speech input: why it holds no speech ("" if it may); None: not speech

    @property
    def low(self) -> bool:
        return bool(self.why_low)

    @property
    def no_speech(self) -> bool:
        """The input held no speech (silence, a tone, noise): the model was not asked, the text is empty."""
        return bool(self.why_no_speech)

    def to_dict(self) -> dict:
        """The fields ``aromni asr --json``/``caption --json`` print after the input's name (and the server sends):
        text, the confidence measures, low_confidence and, when low, why_low; for speech also no_speech and, when
        there was none, why_no_speech."""
        out = {"text": self.text, **self.confidence.to_dict(), "low_confidence": self.low}
        if self.low:
            out["why_low"] = self.why_low
        if self.why_no_speech is not None:
            out["no_speech"] = self.no_speech
            if self.no_speech:
                out["why_no_speech"] = self.why_no_speech
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Answer":
        """The answer ``to_dict`` describes (log-probabilities rounded as printed)."""
        avg, first, least = (d.get(k) for k in ("avg_logprob", "first_logprob", "min_logprob"))
        fit = {k: d.get(k) for k in FIT_MEASURES}
        if avg is None or first is None or least is None:
            conf = Confidence(-math.inf, -math.inf, -math.inf, 0, **fit)
        else:
            conf = Confidence(float(avg), float(first), float(least), tokens=int(d.get("tokens", 1)), **fit)
        speech = None
        if "no_speech" in d:
            speech = str(d.get("why_no_speech") or ("no speech" if d["no_speech"] else ""))
        return cls(str(d["text"]), conf, str(d.get("why_low") or ""), speech)


def answer_logprobs(tokens: list[int], logprobs: list[float | None], vocab: VocabLayout) -> list[float]:
    """Log-probabilities of a text answer's chosen tokens: every token up to and including the first stop
    (``</s>``/``<eom>``: ending there was a choice too), forced ones left out."""
    out = []
    for t, lp in zip(tokens, logprobs):
        if lp is not None:
            out.append(lp)
        if t in (vocab.eos, vocab.eom):
            break
    return out


def summarize(logprobs: list[float], codec_error: float | None = None,
              image_error: float | None = None) -> Confidence:
    """Confidence of an answer from its tokens' log-probabilities (an empty list: no evidence, -inf) and the
    input's fit measures."""
    if not logprobs:
        return Confidence(-math.inf, -math.inf, -math.inf, 0, codec_error, image_error)
    return Confidence(sum(logprobs) / len(logprobs), logprobs[0], min(logprobs), len(logprobs), codec_error,
                      image_error)


def rules(task: str, source: str) -> Rules:
    """The low-confidence rules for ``task`` of the model loaded from ``source`` (its ``aromni.json``'s
    ``confidence`` entry); none (never flagged) for a model without them."""
    path = os.path.join(source, "aromni.json") if source else ""
    if not path or not os.path.isfile(path):
        return ()
    return _stored_rules(os.path.realpath(path), os.path.getmtime(path)).get(task, ())


@lru_cache(maxsize=8)
def _stored_rules(path: str, mtime: float) -> dict[str, Rules]:  # (mtime: a rewritten file is read again)
    with open(path, encoding="utf-8") as f:
        stored = json.load(f).get("confidence") or {}
    return {t: tuple((str(m), str(op), float(v)) for m, op, v in rs) for t, rs in stored.items()}


def rules_entry(limits: dict[str, Rules]) -> dict[str, list[list]]:
    """``aromni.json``'s ``confidence`` entry for per-task rules (thresholds rounded to 4 decimals)."""
    for task, rs in limits.items():
        if tuple((m, op) for m, op, _ in rs) != RULE_MEASURES.get(task):
            raise ValueError(f"rules for {task} must use the measures {RULE_MEASURES.get(task)}")
    return {t: [[m, op, round(float(v), 4)] for m, op, v in rs] for t, rs in limits.items()}


def why_low(c: Confidence, limits: Rules) -> str:
    """Why ``c`` is low under ``limits`` (the first rule that holds), or "" when none does. A measure without a
    value (no chosen token, an input not measured) holds no rule."""
    for measure, op, value in limits:
        x = getattr(c, measure)
        if x is None or (measure not in FIT_MEASURES and not c.tokens):
            continue
        if (x < value) if op == "<" else (x > value):
            return f"{LABELS[measure]} {x:.3f} is {'below' if op == '<' else 'above'} {value:.3f}"
    return ""
