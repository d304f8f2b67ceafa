"""Word error rate with jiwer: per-utterance edit counts, summed for the corpus figure."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import AromniError, NotAvailableError
from .normalize import normalize_text


@dataclass
class WERStats:
    """Levenshtein word alignment counts; ``wer = (S + D + I) / N`` with N reference words."""

    ref_words: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float | None:
        """None when there are no reference words (undefined)."""
        return self.errors / self.ref_words if self.ref_words else None

    def __add__(self, other: "WERStats") -> "WERStats":
        return WERStats(self.ref_words + other.ref_words, self.substitutions + other.substitutions,
                        self.deletions + other.deletions, self.insertions + other.insertions)

    def to_dict(self) -> dict:
        return {"wer": self.wer, "errors": self.errors, **asdict(self)}


def _jiwer():
    try:
        import jiwer
    except ImportError:
        raise NotAvailableError("WER needs jiwer: pip install 'aromni[eval]'") from None
    return jiwer


def word_errors(ref: str, hyp: str, normalize: bool = True) -> WERStats:
    """Edit counts of one hypothesis against one reference (both normalised unless ``normalize=False``)."""
    if normalize:
        ref, hyp = normalize_text(ref), normalize_text(hyp)
    r, h = ref.split(), hyp.split()
    if not r:
        return WERStats(0, 0, 0, len(h))
    if not h:
        return WERStats(len(r), 0, len(r), 0)
    o = _jiwer().process_words(" ".join(r), " ".join(h))
    return WERStats(len(r), o.substitutions, o.deletions, o.insertions)


def corpus_wer(refs: list[str], hyps: list[str], normalize: bool = True) -> WERStats:
    """Summed edit counts over a corpus (the standard corpus WER, not a mean of per-utterance rates)."""
    if len(refs) != len(hyps):
        raise AromniError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = WERStats()
    for r, h in zip(refs, hyps):
        total = total + word_errors(r, h, normalize)
    return total
