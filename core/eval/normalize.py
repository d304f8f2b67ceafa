"""The text normaliser applied to references and hypotheses before WER (and to captions before CIDEr).

Rules, in order (``NORMALIZER`` names this version; reports record it):

1. Unicode NFKC, then lowercase (casefold); curly apostrophes become ``'``.
2. Annotations in square or angle brackets are dropped (``[noise]``, ``<unk>``).
3. Numbers are spelled out in English words: ``25`` -> ``twenty five``, ``3.5`` -> ``three point five``,
   ``1,000`` -> ``one thousand``; ``%`` -> ``percent``, ``&`` -> ``and``. Years are read as plain numbers
   (``1999`` -> ``one thousand nine hundred ninety nine``), so a judge that writes "nineteen ninety-nine"
   still differs.
4. Hyphens, dashes and slashes separate words; every other punctuation mark or symbol is removed.
   Apostrophes are kept inside words (``don't``, ``it's``) and dropped at word edges.
5. British spellings become American (``colour`` -> ``color``, ``centre`` -> ``center``, ``grey`` -> ``gray``,
   ``favourite``, ``organise``...; a fixed list of common words with their inflections, ``_BRITISH``), as the
   Whisper judge writes American English.
6. Whitespace is collapsed.

No contractions are expanded; LibriSpeech references (upper case, apostrophes only) pass through unchanged
apart from case.
"""
from __future__ import annotations

import re
import unicodedata

NORMALIZER = "aromni-en-2"  # -1 had no British -> American spelling map

# British -> American stems; _inflections adds each stem's suffixed forms (_SUFFIXES)
_BRITISH_STEMS = {
    "colour": "color", "flavour": "flavor", "favour": "favor", "favourite": "favorite", "honour": "honor",
    "humour": "humor", "labour": "labor", "neighbour": "neighbor", "behaviour": "behavior", "harbour": "harbor",
    "rumour": "rumor", "vapour": "vapor", "armour": "armor", "odour": "odor", "savour": "savor", "parlour": "parlor",
    "centre": "center", "metre": "meter", "litre": "liter", "theatre": "theater", "fibre": "fiber",
    "kilometre": "kilometer", "centimetre": "centimeter", "millimetre": "millimeter", "calibre": "caliber",
    "grey": "gray", "organise": "organize", "realise": "realize", "recognise": "recognize", "apologise": "apologize",
    "analyse": "analyze", "paralyse": "paralyze", "travelled": "traveled", "travelling": "traveling",
    "traveller": "traveler", "cancelled": "canceled", "cancelling": "canceling", "modelling": "modeling",
    "jewellery": "jewelry", "programme": "program", "catalogue": "catalog", "dialogue": "dialog",
    "defence": "defense", "offence": "offense", "licence": "license", "practise": "practice", "tyre": "tire",
    "aluminium": "aluminum", "cheque": "check", "mum": "mom", "pyjamas": "pajamas", "plough": "plow",
    "aeroplane": "airplane", "moustache": "mustache", "sceptical": "skeptical", "storey": "story",
}


_SUFFIXES = ("s", "ed", "ing", "er", "ers", "ful", "less", "ish")


def _inflections(stems: dict) -> dict:
    out = {}
    for b, a in stems.items():
        out[b] = a
        for suf in _SUFFIXES:
            if b.endswith("e") and suf[0] in "ei":
                out[b[:-1] + suf] = (a[:-1] if a.endswith("e") else a) + suf
            else:
                out[b + suf] = a + suf
    return out


_BRITISH = _inflections(_BRITISH_STEMS)

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]


def number_words(n: int) -> str:
    """Non-negative integer -> English words without "and" or hyphens (``342`` -> ``three hundred forty two``)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for value, name in _SCALES:
        if n >= value:
            if n // value >= 1000 and value == _SCALES[0][0]:
                break  # beyond trillions: read digit by digit
            rest = n % value
            return number_words(n // value) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def _spell_number(m: re.Match) -> str:
    whole, frac = m.group(1).replace(",", ""), m.group(2)
    # a leading zero ("007") is read digit by digit, as people do
    words = (" ".join(_ONES[int(d)] for d in whole) if len(whole) > 1 and whole[0] == "0"
             else number_words(int(whole)))
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


_BRACKETS = re.compile(r"\[[^\]]*\]|<[^>]*>")
_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")
_SEPARATORS = re.compile(r"[-\u2010-\u2015/]")
_EDGE_APOSTROPHES = re.compile(r"(?<![\w])'+|'+(?![\w])")


def normalize_text(text: str) -> str:
    """Apply the rules in this module's docstring; returns space-separated words."""
    s = unicodedata.normalize("NFKC", text).casefold()
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    s = _BRACKETS.sub(" ", s)
    s = s.replace("%", " percent ").replace("&", " and ")
    s = _NUMBER.sub(_spell_number, s)
    s = _SEPARATORS.sub(" ", s)
    s = "".join(c if c == "'" or not unicodedata.category(c).startswith(("P", "S")) else " " for c in s)
    s = _EDGE_APOSTROPHES.sub(" ", s)
    return " ".join(_BRITISH.get(w, w) for w in s.split())
