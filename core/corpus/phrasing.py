"""How people ask for a scene picture: many phrasings of one scene prompt.

A phrasing is a request frame ("draw {}", "show me {}"), a word order for each object (without a frame: "a big
red circle on the left", "on the left a big red circle", "on the left there is ..."), synonyms (big/large/huge,
small/little/tiny, box for square, center/middle for centre) and a surface form (lower case, or capitalised with a
final period).
Every phrasing states the scene's attributes in words that ``scenes.parse_caption`` reads back.

The frames are split: ``TRAIN_FRAMES`` may appear in training inputs; ``HELDOUT_FRAMES`` never do. A held-out
frame is made of words the training frames use, in combinations training never shows ("please show me {}"), so
it measures whether the model follows the scene's words rather than the sentence it has seen.
"""
from __future__ import annotations

import numpy as np

from . import scenes as S

TRAIN_FRAMES = ("{}", "draw {}", "please draw {}", "can you draw {}", "draw me {}", "show me {}", "paint {}",
                "make {}", "a picture of {}", "i want {}", "i would like {}")
HELDOUT_FRAMES = ("please show me {}", "can you paint {}", "i want a picture of {}", "please make me {}",
                  "show me a picture of {}", "can you draw me {}")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
SHAPE_WORDS = {"circle": ("circle",), "square": ("square", "box"), "triangle": ("triangle",), "star": ("star",)}
WHERE_WORDS = {"left": ("on the left", "at the left"), "right": ("on the right", "at the right"),
               "top": ("at the top",), "bottom": ("at the bottom",),
               "centre": ("in the centre", "in the center", "in the middle")}
ORDERS = 3  # object phrase first; place first; "there is" after the place


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _object(rng: np.random.Generator, obj: dict, order: int) -> str:
    words = ([_pick(rng, SIZE_WORDS[obj["size"]])] if "size" in obj else []) + [
        obj["colour"], _pick(rng, SHAPE_WORDS[obj["shape"]])]
    thing = "a " + " ".join(words)
    where = _pick(rng, WHERE_WORDS[obj["position"]])
    if order == 0:
        return f"{thing} {where}"
    if order == 1:
        return f"{where} {thing}"
    return f"{where} there is {thing}"


def phrase(attrs: dict, rng: np.random.Generator, heldout: bool = False) -> str:
    """One phrasing of the scene ``attrs``, drawn with ``rng``: a training frame, or with ``heldout`` a held-out
    one."""
    frame = _pick(rng, HELDOUT_FRAMES if heldout else TRAIN_FRAMES)
    order = int(rng.integers(ORDERS)) if frame == "{}" else 0  # "draw on the left a ..." is not English
    body = " and ".join(_object(rng, o, order) for o in attrs["objects"])
    text = frame.format(body)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:] + "."
    return text


def frame_of(text: str) -> str | None:
    """The frame of a phrasing (``"{}"`` for none), or None when ``text`` fits no known frame."""
    t = text.strip().rstrip(".").lower()
    for frame in sorted(TRAIN_FRAMES + HELDOUT_FRAMES, key=len, reverse=True):
        head = frame.split("{}")[0]
        if frame != "{}" and t.startswith(head):
            return frame
    return "{}" if t.startswith(("a ", "on ", "at ", "in ")) else None


def check_phrasing(text: str, attrs: dict) -> bool:
    """True when ``text`` states exactly the scene's objects (``scenes.parse_caption``)."""
    return S.attrs_match(S.parse_caption(text), attrs)
