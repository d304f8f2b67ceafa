"""Everyday English sentences for the corpus: greetings, numbers, short statements and questions.

All text is lower case without punctuation (the form ASR targets and WER use); ``written`` gives a
capitalised, punctuated form for TTS inputs. ``split_sentences`` holds out a deterministic subset whose
words all still occur in training, so held-out sentences are new combinations, not new words.
"""
from __future__ import annotations

import numpy as np

# Always in training (the demo phrases among them).
FIXED = (
    "hello", "hello world", "hi there", "hello there", "good morning", "good afternoon", "good evening",
    "good night", "how are you", "i am fine thank you", "nice to meet you", "thank you", "thank you very much",
    "you are welcome", "goodbye", "see you later", "see you tomorrow", "have a nice day", "what is your name",
    "my name is sam", "where are you from", "yes please", "no thank you", "excuse me", "i am sorry",
    "how can i help you", "what time is it", "it is time to go", "let us begin", "welcome home",
    "one two three", "four five six", "seven eight nine ten", "one two three four five",
)

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "twenty", "thirty", "fifty", "one hundred")
NOUNS = ("cats", "dogs", "apples", "books", "birds", "cars", "chairs", "cups")
ANIMALS = ("cat", "dog", "bird", "horse", "fish", "cow")
ANIMAL_DOING = ("is sleeping", "is hungry", "is running", "is very small", "is in the garden", "is happy")
FOODS = ("apples", "bread", "rice", "tea", "coffee", "soup", "cheese", "oranges")
PLACES = ("park", "shop", "school", "station", "beach", "market", "library")
THINGS = ("door", "window", "box", "book", "bag", "map")
WEATHER = ("sunny", "cold", "warm", "rainy", "windy", "cloudy")
DAYS = ("today", "tomorrow", "on monday", "on friday", "this evening")
PEOPLE = ("my mother", "my father", "my sister", "my brother", "my friend", "the teacher")
COLOUR_WORDS = ("red", "green", "blue", "yellow", "purple", "cyan")  # shared with the scene captions
PEOPLE_AT = ("is at home", "is at work", "is in the kitchen", "is reading a book", "is very kind")


def templated() -> list[str]:
    """The template-generated sentences, in a fixed order (no duplicates, none in FIXED)."""
    out: list[str] = []
    out += [f"the number is {n}" for n in NUMBERS]
    out += [f"i have {n} {x}" for n in NUMBERS[2:10] for x in NOUNS[:4]]
    out += [f"there are {n} {x} here" for n in NUMBERS[2:8] for x in NOUNS[4:]]
    out += [f"{a} plus {b} is {NUMBERS[NUMBERS.index(a) + NUMBERS.index(b)]}"
            for a in NUMBERS[1:5] for b in NUMBERS[1:5]]
    out += [f"the {a} {d}" for a in ANIMALS for d in ANIMAL_DOING]
    out += [f"i like {f}" for f in FOODS] + [f"we do not like {f}" for f in FOODS[::2]]
    out += [f"we are going to the {p}" for p in PLACES] + [f"where is the {p}" for p in PLACES]
    out += [f"please open the {t}" for t in THINGS] + [f"please close the {t}" for t in THINGS]
    out += [f"where is my {t}" for t in THINGS]
    out += [f"it is {w} {d}" for w in WEATHER for d in DAYS[:3]]
    out += [f"see you {d}" for d in DAYS[2:]]
    out += [f"{p} {s}" for p in PEOPLE for s in PEOPLE_AT]
    out += [f"the {t} is {c}" for t in THINGS for c in COLOUR_WORDS]
    out += [f"my favourite colour is {c}" for c in COLOUR_WORDS] + [f"do you like {f}" for f in FOODS]
    seen, uniq = set(FIXED), []
    for s in out:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


def wider() -> list[str]:
    """More sentences from the same words, in a fixed order: every template filled with every fitting word of
    its kind, and the slots of one template filled from another's (people and animals swap what they do,
    things get colours, numbers count every noun). None is in ``all_sentences``. Training lines of them
    (``recipes/default/steps.py voice-lines``) teach a recogniser words rather than 304 whole sentences; the
    caller leaves out held-out sentences."""
    plural = NOUNS + ("oranges",)
    out: list[str] = []
    out += [f"i have {n} {x}" for n in NUMBERS[2:] for x in plural]
    out += [f"there are {n} {x} here" for n in NUMBERS[2:] for x in plural]
    out += [f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}" for a in range(1, 11) for b in range(1, 11)
            if a + b <= 12]
    out += [f"the {a} {d}" for a in ANIMALS for d in ANIMAL_DOING + PEOPLE_AT[:3]]
    out += [f"{p} {d}" for p in PEOPLE for d in ANIMAL_DOING + PEOPLE_AT]
    out += [f"{who} {verb} {f}" for who in ("i", "we") for verb in ("like", "do not like") for f in FOODS]
    out += [f"do you like {f}" for f in FOODS]
    out += [f"{who} going to the {p}" for who in ("we are", "i am", "my friend is", "the teacher is")
            for p in PLACES]
    out += [f"where is {w} {x}" for w in ("the", "my") for x in PLACES + THINGS]
    out += [f"please {v} the {t}" for v in ("open", "close") for t in THINGS]
    out += [f"{w} {t} is {c}" for w in ("the", "my") for t in THINGS + ANIMALS for c in COLOUR_WORDS]
    out += [f"it is {w} {d}" for w in WEATHER for d in DAYS] + [f"see you {d}" for d in DAYS]
    out += [f"{w} favourite colour is {c}" for w in ("my", "your") for c in COLOUR_WORDS]
    out += [f"the number is {n}" for n in NUMBERS]
    seen, uniq = set(all_sentences()), []
    for s in out:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


def all_sentences() -> list[str]:
    return list(FIXED) + templated()


def split_sentences(seed: int = 0, heldout_frac: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, heldout), both in a seed-determined order. Held-out sentences come from the templates only and
    every word of them still occurs in some training sentence."""
    rng = np.random.default_rng([seed, 11])
    pool = templated()
    order = [pool[i] for i in rng.permutation(len(pool))]
    counts: dict[str, int] = {}
    for s in all_sentences():
        for w in s.split():
            counts[w] = counts.get(w, 0) + 1
    want = round(heldout_frac * len(pool))
    held: list[str] = []
    for s in order:
        if len(held) == want:
            break
        words = s.split()
        if all(counts[w] - words.count(w) >= 1 for w in set(words)):
            held.append(s)
            for w in words:
                counts[w] -= 1
    hs = set(held)
    train = list(FIXED) + [s for s in order if s not in hs]
    return train, held


QUESTION_WORDS = ("what", "where", "how", "who", "can", "do", "is", "are")


def written(s: str) -> str:
    """Written form of a corpus sentence: capitalised, "i" as "I", final punctuation."""
    words = ["I" if w == "i" else w for w in s.split()]
    text = " ".join(words)
    text = text[:1].upper() + text[1:]
    if words[0] in QUESTION_WORDS:
        return text + "?"
    if s in ("hello", "hello world", "hi there", "hello there", "goodbye", "thank you"):
        return text + "!"
    return text + "."


def normalise(text: str) -> str:
    """The corpus's text normal form (lower case, letters/digits/apostrophes, single spaces), e.g. for WER."""
    import re

    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))
