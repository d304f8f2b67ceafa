"""How sure the model was of a text answer, from the log-probabilities of the tokens it chose (like Whisper's
``avg_logprob``), and the per-task rule below which an answer is flagged as low confidence.

The rules were calibrated on the bundled model (scripts/confidence_calibration.py, docs/evaluation.md,
"Confidence"): each task's most separating measure, with its threshold at the 5th percentile of held-out in-domain
answers, so about one in twenty in-domain answers is flagged. For ASR that measure is the first token's
log-probability: this model picks a whole corpus sentence with its first words, and out-of-domain speech shows as
doubt there, while the rest of a wrong sentence follows confidently. The rules hold for that model only: other
models' answers carry their confidence but are never flagged.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .vocab import VocabLayout

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default")
# task -> (Confidence field, threshold): below it, "low confidence" (bundled model; docs/evaluation.md)
RULES: dict[str, tuple[str, float]] = {"asr": ("first_logprob", -0.861), "caption": ("avg_logprob", -0.036)}


@dataclass(frozen=True)
class Confidence:
    """Summary of the chosen tokens of one answer (forced tokens excluded)."""

    avg_logprob: float  # mean natural log-probability per token
    first_logprob: float  # the first token's
    min_logprob: float  # the least likely token's
    tokens: int  # tokens the summary covers

    def to_dict(self) -> dict:
        """JSON fields (None where no token was chosen)."""
        keys = ("avg_logprob", "first_logprob", "min_logprob")
        return {k: round(getattr(self, k), 4) if self.tokens else None for k in keys}


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


def summarize(logprobs: list[float]) -> Confidence:
    """Confidence of an answer from its tokens' log-probabilities (an empty list: no evidence, -inf)."""
    if not logprobs:
        return Confidence(-math.inf, -math.inf, -math.inf, 0)
    return Confidence(sum(logprobs) / len(logprobs), logprobs[0], min(logprobs), len(logprobs))


def rule(task: str, source: str) -> tuple[str, float] | None:
    """The low-confidence rule (measure, threshold) for ``task`` of the model loaded from ``source``: the
    calibrated one for the bundled model, None (never flagged) for any other."""
    if not source or os.path.realpath(source) != os.path.realpath(BUNDLED):
        return None
    return RULES.get(task)


LABELS = {"avg_logprob": "average token log-probability", "first_logprob": "first token's log-probability",
          "min_logprob": "lowest token log-probability"}


def why_low(c: Confidence, limit: tuple[str, float] | None) -> str:
    """Why ``c`` is low under ``limit`` ("" when it is not)."""
    if not is_low(c, limit):
        return ""
    measure, value = limit
    return f"{LABELS[measure]} {getattr(c, measure):.2f} is below {value:.3f}"


def is_low(c: Confidence, limit: tuple[str, float] | None) -> bool:
    """Whether ``c`` falls below ``limit`` (an answer with no chosen token is never flagged)."""
    return limit is not None and c.tokens > 0 and getattr(c, limit[0]) < limit[1]
