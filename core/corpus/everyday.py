"""What people say to a small model besides scenes: digits and numbers, spelled letters and the NATO alphabet,
times and dates, short commands and everyday sentences.

Every line is made here from templates and word lists (aromni's own text, Apache-2.0): lower case, no
punctuation, the form ASR targets and WER use (``sentences.written`` gives a written form). Single words come
first and are always in training: they are the vocabulary (a number, a letter, a NATO word, a month); the
held-out split takes multi-word lines whose every word still occurs in training, so held-out lines are new
combinations, not new words.
"""
from __future__ import annotations

import numpy as np

from . import sentences as T

ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
ORDINALS = ("zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
            "eighteenth", "nineteenth")
TENS_ORDINALS = ("", "", "twentieth", "thirtieth", "fortieth", "fiftieth", "sixtieth", "seventieth", "eightieth",
                 "ninetieth")
SCALES = ("hundred", "thousand", "million", "billion")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
NATO = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
        "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey",
        "xray", "yankee", "zulu", "niner")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
SYMBOLS = ("star", "pound", "dash", "dot", "plus", "minus", "slash", "space", "at", "dollar", "equals", "comma",
           "colon", "semicolon", "percent", "underscore", "asterisk", "ampersand", "tilde", "caret", "pipe", "quote",
           "tick", "backtick", "backslash", "question mark", "open parenthesis", "close parenthesis",
           "left bracket", "right bracket", "left brace", "right brace", "less than", "greater than")
WORDS = ("today", "tomorrow", "yesterday", "o'clock", "a m", "p m", "oh", "dollars", "zed")
ACTIONS = {"turn on": ("the light", "the radio", "the heating", "the fan", "the television"),
           "turn off": ("the light", "the radio", "the heating", "the fan", "the television"),
           "open": ("the door", "the window", "the box", "the map"), "close": ("the door", "the window"),
           "call": ("my mother", "my father", "my sister", "my brother", "my friend", "the office"),
           "play": ("some music", "the next song", "the radio"), "stop": ("the music", "the timer", "the alarm")}
SHORT_COMMANDS = ("stop", "go", "wait", "yes", "no", "help", "cancel", "repeat", "go back", "start again",
                  "louder", "quieter", "next", "previous", "pause", "continue", "try again", "i do not know")
N_RANDOM = {"digits": 300, "numbers": 300, "letters": 160, "nato": 160, "times": 240, "dates": 240}


def number_words(n: int) -> str:
    """``n`` (0 <= n < 10**12) in words, without "and": 105 -> "one hundred five"."""
    if not 0 <= n < 10**12:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for power, name in ((10**9, "billion"), (10**6, "million"), (10**3, "thousand")):
        if n >= power:
            rest = n % power
            return number_words(n // power) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    """The ordinal of 1 <= n < 100 in words: 21 -> "twenty first"."""
    if not 1 <= n < 100:
        raise ValueError(f"ordinal out of range: {n}")
    if n < 20:
        return ORDINALS[n]
    return TENS_ORDINALS[n // 10] if n % 10 == 0 else f"{TENS[n // 10]} {ORDINALS[n % 10]}"


def single_words() -> list[str]:
    """Every word of the vocabulary said alone (numbers, ordinals, scales, letters, NATO, days, months,
    symbols)."""
    out = [number_words(n) for n in range(20)] + [number_words(n) for n in range(20, 100, 10)]
    out += [ordinal_words(n) for n in range(1, 20)] + [ordinal_words(n) for n in range(20, 100, 10)]
    out += list(SCALES) + [f"{x}th" for x in SCALES] + list(LETTERS) + list(NATO) + list(DAYS) + list(MONTHS)
    out += list(SYMBOLS) + list(WORDS)
    return _unique(out)


def year_words(y: int) -> str:
    """A year as people say it: 1990 -> "nineteen ninety", 2005 -> "two thousand five", 1905 -> "nineteen oh
    five", 2019 -> "twenty nineteen"."""
    if 2000 <= y < 2010 or y % 1000 == 0:
        return number_words(y)
    hi, lo = divmod(y, 100)
    return number_words(hi) + (" hundred" if lo == 0 else f" oh {ONES[lo]}" if lo < 10 else " " + number_words(lo))


def _time(rng: np.random.Generator) -> str:
    h, m = int(rng.integers(1, 13)), int(rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50] + list(range(1, 60))))
    when = number_words(h) + (" o'clock" if m == 0 else f" oh {number_words(m)}" if m < 10 else
                              " " + number_words(m))
    form = int(rng.integers(6))
    if form == 1 and m in (15, 30, 45):
        when = {15: f"quarter past {number_words(h)}", 30: f"half past {number_words(h)}",
                45: f"quarter to {number_words(h % 12 + 1)}"}[m]
    if rng.random() < 0.3:
        when += " a m" if rng.random() < 0.5 else " p m"
    return ("it is {}", "at {}", "the meeting is at {}", "wake me up at {}", "set an alarm for {}",
            "the train leaves at {}")[int(rng.integers(6))].format(when)


def _date(rng: np.random.Generator) -> str:
    month, day = MONTHS[int(rng.integers(12))], ordinal_words(int(rng.integers(1, 32)))
    weekday = DAYS[int(rng.integers(7))]
    forms = (f"{month} {day}", f"the {day} of {month}", f"{weekday} the {day} of {month}", f"on {weekday}",
             f"on {month} {day}", f"{weekday} {month} {day}", f"my birthday is on {month} {day}",
             f"today is {weekday}", f"tomorrow is {weekday} the {day}",
             f"{month} {day} {year_words(int(rng.integers(1900, 2031)))}")
    return forms[int(rng.integers(len(forms)))]


def _digits(rng: np.random.Generator) -> str:
    k = int(rng.integers(2, 8))
    ds = " ".join(ONES[int(d)] if d or rng.random() < 0.5 else "oh" for d in rng.integers(0, 10, size=k))
    return ("{}", "my number is {}", "the code is {}", "dial {}", "room {}", "extension {}",
            "press {}")[int(rng.integers(7))].format(ds)


def _number(rng: np.random.Generator) -> str:
    n = int(rng.choice([rng.integers(0, 100), rng.integers(100, 1000), rng.integers(1000, 10**6),
                        rng.integers(10**6, 10**9)], p=[0.45, 0.3, 0.2, 0.05]))
    return ("{}", "the number is {}", "it costs {} dollars", "there are {} people", "page {}", "minus {}",
            "i counted {}", "add {}")[int(rng.integers(8))].format(number_words(n))


def _letters(rng: np.random.Generator) -> str:
    k = int(rng.integers(2, 6))
    ls = " ".join(LETTERS[int(i)] for i in rng.integers(0, 26, size=k))
    return ("{}", "spell it {}", "the letters are {}", "my initials are {}")[int(rng.integers(4))].format(ls)


def _nato(rng: np.random.Generator) -> str:
    k = int(rng.integers(2, 6))
    ws = " ".join(NATO[int(i)] for i in rng.integers(0, len(NATO), size=k))
    return ("{}", "call sign {}", "that is {}", "i spell {}")[int(rng.integers(4))].format(ws)


def commands() -> list[str]:
    """Short commands: bare ones, and every action with each of its objects, plain and with "please"."""
    out = list(SHORT_COMMANDS)
    for verb, objs in ACTIONS.items():
        out += [f"{verb} {o}" for o in objs] + [f"please {verb} {o}" for o in objs]
    out += [f"open {a} and {b}" for a in ACTIONS["open"] for b in ACTIONS["open"] if a != b]
    return _unique(out)


MAKERS = {"digits": _digits, "numbers": _number, "letters": _letters, "nato": _nato, "times": _time, "dates": _date}


def generated(seed: int = 0) -> list[str]:
    """The random families (``N_RANDOM`` lines each, duplicates dropped), in a seed-determined order."""
    out: list[str] = []
    for k, (family, make) in enumerate(MAKERS.items()):
        rng = np.random.default_rng([seed, 31, k])
        out += [make(rng) for _ in range(N_RANDOM[family])]
    return _unique(out)


def everyday_lines(seed: int = 0) -> tuple[list[str], list[str]]:
    """(always-in-training lines, lines that may be held out): single words and the everyday sentences' fixed
    lines first; then the commands, the generated families and the everyday templates."""
    fixed = _unique(single_words() + list(T.FIXED))
    pool = [s for s in _unique(commands() + generated(seed) + T.templated()) if s not in set(fixed)]
    return fixed, pool


def split_everyday(seed: int = 0, heldout_frac: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, heldout) of the wider world, as ``sentences.split_sentences`` splits its sentences: held-out lines
    are multi-word lines whose every word occurs in training."""
    fixed, pool = everyday_lines(seed)
    rng = np.random.default_rng([seed, 11])
    order = [pool[i] for i in rng.permutation(len(pool))]
    counts: dict[str, int] = {}
    for s in fixed + pool:
        for w in s.split():
            counts[w] = counts.get(w, 0) + 1
    want = round(heldout_frac * len(pool))
    held: list[str] = []
    for s in order:
        if len(held) == want:
            break
        words = s.split()
        if len(words) > 1 and all(counts[w] - words.count(w) >= 1 for w in set(words)):
            held.append(s)
            for w in words:
                counts[w] -= 1
    hs = set(held)
    return fixed + [s for s in order if s not in hs], held


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))
