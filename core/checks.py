"""Numeric options: one table of what each accepts, one check used by the library and the CLI.

Every value must be a finite number (``nan``/``inf`` are refused), integers where the option counts things, and
inside the option's range. Errors are :class:`OptionError` naming the library's option name; the CLI shows the
matching flag.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import OptionError


@dataclass(frozen=True)
class Range:
    """Accepted values: ``lo`` .. ``hi`` (either open or closed; None: unbounded), integers only if ``integer``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    hint: str = ""

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else 'at least'} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else 'at most'} {_num(self.hi)}"
        return "a finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


COUNT = Range(lo=1, integer=True)  # one or more
NONNEG = Range(lo=0, integer=True)  # zero or more
POSITIVE = Range(lo=0, lo_open=True)  # a real number > 0
MASS = Range(lo=0, hi=1, lo_open=True)  # a probability mass in (0, 1]

RANGES: dict[str, Range] = {
    # decoding
    "max_new_tokens": COUNT,
    "max_total_tokens": COUNT,
    "max_speech_tokens": COUNT,
    "max_text_tokens": COUNT,
    "temperature": Range(lo=0, lo_open=True, hint="use greedy decoding for argmax"),
    "image_temperature": Range(lo=0, lo_open=True, hint="use greedy image decoding for argmax"),
    "top_p": MASS,
    "image_top_p": MASS,
    "top_k": Range(lo=0, integer=True, hint="0 = off"),
    "image_top_k": Range(lo=0, integer=True, hint="0 = off"),
    "repetition_penalty": POSITIVE,
    "cfg_text": Range(lo=0),
    "cfg_image": Range(lo=0),
    "candidates": COUNT,
    "chunk_words": Range(lo=0, integer=True, hint="0 = whole sentences"),
    "speech_pad": NONNEG,
    "lead_in": Range(lo=0, hi=10, hint="seconds"),
    "batch_size": COUNT,
    # tasks and tools
    "window_s": Range(lo=0, lo_open=True, hint="seconds"),
    "n": COUNT,
    "limit": COUNT,
    "seed": Range(lo=0, hi=2**32 - 1, integer=True),
    "smooth": Range(lo=0, hi=1, hi_open=True),
    "sample_rate": Range(lo=8000, hi=192000, integer=True, hint="Hz"),
    "workers": COUNT,
    "threads": COUNT,
}


def check_number(name: str, value, rule: Range | None = None) -> None:
    """Raise OptionError unless ``value`` is acceptable for option ``name`` (None: not given, accepted)."""
    if value is None:
        return
    rule = rule or RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(name, f"must be a number (got {value!r})")
    if not math.isfinite(value):
        raise OptionError(name, f"must be a finite number (got {value})")
    if rule.integer and not float(value).is_integer():
        raise OptionError(name, f"must be a whole number (got {value})")
    low = rule.lo is not None and (value <= rule.lo if rule.lo_open else value < rule.lo)
    high = rule.hi is not None and (value >= rule.hi if rule.hi_open else value > rule.hi)
    if low or high:
        hint = f"; {rule.hint}" if rule.hint else ""
        raise OptionError(name, f"must be {rule.describe()} (got {_num(value)}{hint})")


def check_numbers(**values) -> None:
    """``check_number`` for each ``name=value`` given (names from :data:`RANGES`)."""
    for name, value in values.items():
        check_number(name, value)
