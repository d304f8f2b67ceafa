"""Procedural scenes for the synthetic corpus: attributes, drawing, template captions, and a deterministic
analyser that reads the attributes back from (possibly blurry, noisy) generated images.

A scene is a dict::

    {"background": "white", "objects": [{"shape": "circle", "colour": "red", "size": "small",
                                         "position": "left", "offset": [dx, dy]}]}

One object, or two (left+right or top+bottom, distinct colours, drawn at one fixed size, so no "size" key).
``offset`` is a small pixel jitter that only ``draw`` uses; it is not a semantic attribute.
All geometry lives on a 64x64 canvas and is scaled for other sizes.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# --- vocabulary ---------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {  # saturated and far apart (pairwise RGB distance >= 133, >= 170 from every background)
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 210, 20),
    "purple": (160, 40, 180),
    "cyan": (20, 200, 210),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (210, 210, 210)}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
PAIRS = (("left", "right"), ("top", "bottom"))  # two-object layouts, in caption order
OBJECT_KEYS = ("shape", "colour", "size", "position")

CANVAS = 64
ANCHORS = {"left": (17, 32), "right": (47, 32), "top": (32, 17), "bottom": (32, 47), "centre": (32, 32)}
EXTENT = {"small": 16, "large": 28}  # side of the object's bounding box, px
PAIR_EXTENT = 20  # both objects of a two-object scene
SIZE_SPLIT = 22  # analyser: bbox side below this is "small"
MAX_JITTER = 2
SUPERSAMPLE = 4  # mild anti-aliasing: draw at 4x, box-downsample

WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "centre": "in the centre"}


# --- sampling -----------------------------------------------------------------------------------
def sample_scene(rng: np.random.Generator, two_prob: float = 0.2, combos: set | None = None,
                 jitter: int = MAX_JITTER) -> dict:
    """A random scene. ``combos``: allowed (shape, colour, position) triples for every object (None: all)."""
    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    def offset():
        return [int(rng.integers(-jitter, jitter + 1)), int(rng.integers(-jitter, jitter + 1))]

    bg = pick(tuple(BACKGROUNDS))
    for _ in range(10_000):
        if rng.random() < two_prob:
            pair = pick(PAIRS)
            c1 = pick(tuple(COLOURS))
            c2 = pick(tuple(c for c in COLOURS if c != c1))
            objs = [{"shape": pick(SHAPES), "colour": c, "position": p, "offset": offset()}
                    for c, p in zip((c1, c2), pair)]
        else:
            objs = [{"shape": pick(SHAPES), "colour": pick(tuple(COLOURS)), "size": pick(SIZES),
                     "position": pick(POSITIONS), "offset": offset()}]
        if combos is None or all(combo(o) in combos for o in objs):
            return {"background": bg, "objects": objs}
    raise ValueError("no scene satisfies the allowed attribute combinations")


def without_jitter(scene: dict) -> dict:
    """``scene`` drawn canonically: every object's pixel offset set to zero (a new dict)."""
    return {**scene, "objects": [{**o, "offset": [0, 0]} for o in scene["objects"]]}


def combo(obj: dict) -> tuple[str, str, str]:
    return (obj["shape"], obj["colour"], obj["position"])


def all_combos() -> list[tuple[str, str, str]]:
    return [(s, c, p) for s in SHAPES for c in COLOURS for p in POSITIONS]


def heldout_combos(seed: int, frac: float = 0.125) -> set[tuple[str, str, str]]:
    """A deterministic set of (shape, colour, position) triples kept out of training.

    No two held-out triples share a pair of attributes, so every pair (shape+colour, shape+position,
    colour+position) is still seen in training: the held-out scenes test composition, not new words.
    """
    rng = np.random.default_rng([seed, 7])
    cands = all_combos()
    order = rng.permutation(len(cands))
    want = max(1, round(frac * len(cands)))
    used: set = set()
    out: set = set()
    for i in order:
        s, c, p = cands[i]
        pairs = {("sc", s, c), ("sp", s, p), ("cp", c, p)}
        if pairs & used:
            continue
        out.add((s, c, p))
        used |= pairs
        if len(out) == want:
            break
    return out


# --- drawing ------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _unit_polygon(shape: str) -> tuple:
    """Polygon vertices in the unit box [0, 1]^2 (None for the circle)."""
    if shape == "circle":
        return ()
    if shape == "square":
        return ((0, 0), (1, 0), (1, 1), (0, 1))
    if shape == "triangle":
        return ((0.5, 0), (1, 1), (0, 1))
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return tuple(((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts)
    raise ValueError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, box: tuple, fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=fill)
    else:
        d.polygon([(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in _unit_polygon(shape)], fill=fill)


def object_box(obj: dict) -> tuple[float, float, float, float]:
    """Bounding box on the 64-px canvas (x0, y0, x1, y1), continuous coordinates."""
    side = EXTENT[obj["size"]] if "size" in obj else PAIR_EXTENT
    cx, cy = ANCHORS[obj["position"]]
    dx, dy = obj.get("offset", (0, 0))
    cx, cy = cx + dx, cy + dy
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def draw(attrs: dict, size: int = CANVAS) -> Image.Image:
    """Render a scene as an RGB image of ``size`` x ``size`` (deterministic)."""
    k = size / CANVAS * SUPERSAMPLE
    big = Image.new("RGB", (size * SUPERSAMPLE,) * 2, BACKGROUNDS[attrs["background"]])
    d = ImageDraw.Draw(big)
    for obj in attrs["objects"]:
        x0, y0, x1, y1 = object_box(obj)
        # PIL fills pixel (i, j) when its index lies inside; x1 - 1 makes the box exactly (x1 - x0) pixels wide
        _draw_shape(d, obj["shape"], (x0 * k, y0 * k, x1 * k - 1, y1 * k - 1), COLOURS[obj["colour"]])
    return big.reduce(SUPERSAMPLE)


def shape_mask(shape: str, box: tuple, size: int = CANVAS) -> np.ndarray:
    """Soft [0, 1] coverage of ``shape`` filling ``box`` (canvas coordinates), shape (size, size)."""
    k = SUPERSAMPLE
    big = Image.new("L", (size * k,) * 2, 0)
    x0, y0, x1, y1 = box
    _draw_shape(ImageDraw.Draw(big), shape, (x0 * k, y0 * k, x1 * k - 1, y1 * k - 1), 255)
    return np.asarray(big.reduce(k), dtype=np.float32) / 255.0


# --- captions -----------------------------------------------------------------------------------
N_VARIANTS = 4


def _phrase(obj: dict, article: bool = True) -> str:
    words = ([obj["size"]] if "size" in obj else []) + [obj["colour"], obj["shape"]]
    return ("a " if article else "") + " ".join(words)


def caption(attrs: dict, variant: int = 0) -> str:
    """Template caption. Variant 0 is the canonical form ("a small red circle on the left"); 1..3 are
    paraphrases for training inputs ("there is a ...", "on the left there is a ...", "small red circle ...")."""
    parts = []
    for obj in attrs["objects"]:
        where = WHERE[obj["position"]]
        if variant == 0:
            parts.append(f"{_phrase(obj)} {where}")
        elif variant == 1:
            parts.append(("there is " if not parts else "") + f"{_phrase(obj)} {where}")
        elif variant == 2:
            parts.append(f"{where} there is {_phrase(obj)}")
        elif variant == 3:
            parts.append(f"{_phrase(obj, article=False)} {where}")
        else:
            raise ValueError(f"caption variant {variant} out of range 0..{N_VARIANTS - 1}")
    return " and ".join(parts)


_SYNONYMS = {
    "shape": {"circle": "circle", "circles": "circle", "ball": "circle", "round": "circle", "square": "square",
              "squares": "square", "box": "square", "triangle": "triangle", "triangles": "triangle",
              "star": "star", "stars": "star"},
    "colour": {c: c for c in COLOURS} | {"violet": "purple", "turquoise": "cyan"},
    "size": {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large",
             "huge": "large"},
    "position": {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "centre": "centre",
                 "center": "centre", "middle": "centre"},
}


def parse_caption(text: str) -> dict:
    """Attributes stated in a caption (robust to the template variants, synonyms, case, punctuation).

    Returns ``{"objects": [...]}`` (plus ``background`` if "on a <bg> background" is said); an object
    holds only the keys the caption states. Clauses are split at "and"; a clause without a shape word
    adds its words to the previous object.
    """
    words = re.findall(r"[a-z]+", text.lower())
    out: dict = {}
    for i, w in enumerate(words[1:], 1):
        if w == "background" and words[i - 1] in BACKGROUNDS:
            out["background"] = words[i - 1]
    clauses: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            clauses.append([])
        else:
            clauses[-1].append(w)
    objects: list[dict] = []
    for cl in clauses:
        obj: dict = {}
        bg_words = {words_i for j, words_i in enumerate(cl) if j + 1 < len(cl) and cl[j + 1] == "background"}
        for w in cl:
            for key, table in _SYNONYMS.items():
                if w in table and not (key == "colour" and w in bg_words) and key not in obj:
                    obj[key] = table[w]
        if "shape" not in obj and objects:
            for k, v in obj.items():
                objects[-1].setdefault(k, v)
        elif obj:
            objects.append(obj)
    out["objects"] = [o for o in objects if "shape" in o]
    return out


def attrs_match(pred: dict, ref: dict, keys: tuple[str, ...] = OBJECT_KEYS) -> bool:
    """True when ``pred`` states the same objects as ``ref`` (as a multiset, in any order), comparing the
    ``keys`` that the reference object has ("size" is absent in two-object scenes). ``"background"`` in
    ``keys`` also compares the background."""
    if "background" in keys and ref.get("background") != pred.get("background"):
        return False
    okeys = [k for k in keys if k != "background"]
    left = list(pred.get("objects", []))
    refs = ref.get("objects", [])
    if len(left) != len(refs):
        return False
    for r in refs:
        want = [k for k in okeys if k in r]
        hit = next((i for i, p in enumerate(left) if all(p.get(k) == r[k] for k in want)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


# --- analyser -----------------------------------------------------------------------------------
MIN_AREA = 20  # px (64-px canvas); smaller blobs are noise
_PAL = np.array(list(COLOURS.values()), dtype=np.float32)  # (K, 3)
_PAL_NAMES = tuple(COLOURS)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean (H, W) mask, as sorted arrays of flat indices.

    Union-find over horizontal runs: runs in adjacent rows join when they overlap or touch diagonally."""
    h, w = mask.shape
    runs = []  # (row, start, end) with end exclusive
    for y in range(h):
        d = np.diff(np.concatenate([[0], mask[y].astype(np.int8), [0]]))
        runs += [(y, int(a), int(b)) for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1))]
    parent = list(range(len(runs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev: list[int] = []  # run indices of the previous row
    i = 0
    for y in range(h):
        cur = []
        while i < len(runs) and runs[i][0] == y:
            _, a, b = runs[i]
            for j in prev:
                if runs[j][1] <= b and a <= runs[j][2]:  # touching diagonally counts (8-connectivity)
                    parent[find(j)] = find(i)
            cur.append(i)
            i += 1
        prev = cur
    groups: dict[int, list[int]] = {}
    for k in range(len(runs)):
        groups.setdefault(find(k), []).append(k)
    comps = [np.concatenate([np.arange(runs[k][0] * w + runs[k][1], runs[k][0] * w + runs[k][2]) for k in ks])
             for ks in groups.values()]
    comps = [np.sort(c) for c in comps]
    comps.sort(key=lambda c: int(c[0]))
    return comps


def _nearest(table: dict, rgb: np.ndarray) -> str:
    names = list(table)
    d = np.linalg.norm(np.array([table[n] for n in names], dtype=np.float32) - rgb, axis=1)
    return names[int(np.argmin(d))]


def analyse(img: Image.Image) -> dict:
    """Read a scene's attributes back from an image (any size; analysed at 64x64).

    Background = median of the 2-px border. Each pixel is explained as a blend of the background and the
    palette colour whose blend line passes nearest to it (so anti-aliased or blurred edges keep their
    colour); pixels past half-way form the objects (8-connected, >= MIN_AREA px, same-colour fragments
    that nearly touch are merged). Colour = area-weighted majority; shape = best fit of blurred drawings
    (see _fit_shape); size and position from the fitted box (side vs SIZE_SPLIT, nearest anchor to its centre).
    """
    img = img.convert("RGB")
    if img.size != (CANVAS, CANVAS):
        resample = Image.Resampling.BOX if min(img.size) > CANVAS else Image.Resampling.BILINEAR
        img = img.resize((CANVAS, CANVAS), resample)
    a = np.asarray(img, dtype=np.float32)
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3),
                             a[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    x = a.reshape(-1, 3) - bg  # (P, 3)
    dirs = _PAL - bg  # (K, 3)
    norm2 = np.maximum((dirs ** 2).sum(1), 1e-6)
    t = x @ dirs.T / norm2  # (P, K) blend fraction along each line
    # distance from each line: |x|^2 - (x.d)^2 / |d|^2
    resid = np.sqrt(np.maximum((x ** 2).sum(1, keepdims=True) - t ** 2 * norm2, 0.0))  # (P, K)
    resid = np.where(t > 0.15, resid, np.inf)
    label = np.argmin(resid, axis=1)
    tbest = np.where(np.isfinite(resid.min(1)), t[np.arange(len(t)), label], 0.0)
    soft = np.clip(tbest, 0.0, 1.0)
    fg = (tbest >= 0.5).reshape(CANVAS, CANVAS)

    blobs: list[list[Any]] = []  # [palette index, flat pixel indices], merged in place
    for comp in _components(fg):
        votes = np.bincount(label[comp], weights=soft[comp], minlength=len(_PAL))
        blobs.append([int(np.argmax(votes)), comp])
    blobs = _merge_fragments(blobs)

    objects = []
    for k, comp in blobs:
        if len(comp) < MIN_AREA:
            continue
        ys, xs = np.divmod(comp, CANVAS)
        win = np.zeros((CANVAS, CANVAS), dtype=np.float32)
        win[max(0, ys.min() - 4):ys.max() + 5, max(0, xs.min() - 4):xs.max() + 5] = 1.0
        m = np.where(label == k, soft, 0.0).reshape(CANVAS, CANVAS).astype(np.float32) * win
        shape, box = _fit_shape(m, win)
        side = max(box[2] - box[0], box[3] - box[1])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        pos = min(POSITIONS, key=lambda p: (ANCHORS[p][0] - cx) ** 2 + (ANCHORS[p][1] - cy) ** 2)
        objects.append({"shape": shape, "colour": _PAL_NAMES[k], "size": "small" if side < SIZE_SPLIT else "large",
                        "position": pos, "_c": (cy, cx)})
    objects.sort(key=lambda o: (POSITIONS.index(o["position"]), o["_c"]))
    for o in objects:
        del o["_c"]
    return {"background": _nearest(BACKGROUNDS, bg), "objects": objects}


def _merge_fragments(blobs: list, gap: int = 3) -> list:
    """Merge same-colour blobs whose bounding boxes come within ``gap`` px (a blurred object split in two)."""
    def box(comp):
        ys, xs = np.divmod(comp, CANVAS)
        return xs.min(), ys.min(), xs.max(), ys.max()

    merged = True
    while merged:
        merged = False
        for i in range(len(blobs)):
            for j in range(i + 1, len(blobs)):
                if blobs[i][0] != blobs[j][0]:
                    continue
                a, b = box(blobs[i][1]), box(blobs[j][1])
                if a[0] - gap <= b[2] and b[0] - gap <= a[2] and a[1] - gap <= b[3] and b[1] - gap <= a[3]:
                    blobs[i][1] = np.sort(np.concatenate([blobs[i][1], blobs[j][1]]))
                    del blobs[j]
                    merged = True
                    break
            if merged:
                break
    return blobs


@lru_cache(maxsize=None)
def _unit_stats(shape: str) -> tuple[float, float, float]:
    """(area fraction of the unit box, centroid u, centroid v) of a shape drawn in the unit box."""
    if shape == "circle":
        return math.pi / 4, 0.5, 0.5
    pts = _unit_polygon(shape)
    a = cx = cy = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        c = x0 * y1 - x1 * y0
        a += c
        cx += (x0 + x1) * c
        cy += (y0 + y1) * c
    return abs(a) / 2, cx / (3 * a), cy / (3 * a)


@lru_cache(maxsize=None)
def _blur_matrix(sigma: float, n: int = CANVAS) -> np.ndarray:
    """(n, n) Gaussian blur operator (rows normalised), so blur(T) = G @ T @ G.T."""
    i = np.arange(n, dtype=np.float32)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return (g / g.sum(1, keepdims=True)).astype(np.float32)


FIT_BLURS = (0.0, 0.8, 1.4, 2.0)  # px; the analyser models generated images as blurred drawings


def _fit_shape(m: np.ndarray, win: np.ndarray) -> tuple[str, tuple]:
    """Best shape for a soft object mask, with its fitted box.

    Blur keeps an object's mass and centroid, so for each shape hypothesis they fix its box exactly;
    the shape drawn there, blurred by each of FIT_BLURS, is compared to the mask by soft IoU.
    """
    mass = float(m.sum())
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS]
    cy, cx = float((m * (ys + 0.5)).sum() / mass), float((m * (xs + 0.5)).sum() / mass)
    best: tuple[float, str, tuple[float, float, float, float]] = (-1.0, "circle", (0, 0, 0, 0))
    for shape in SHAPES:
        frac, u, v = _unit_stats(shape)
        side = math.sqrt(mass / frac)
        box = (cx - u * side, cy - v * side, cx + (1 - u) * side, cy + (1 - v) * side)
        t = shape_mask(shape, box)
        for sigma in FIT_BLURS:
            tb = t if sigma == 0 else _blur_matrix(sigma) @ t @ _blur_matrix(sigma).T
            score = _soft_iou(m, tb * win)
            if score > best[0]:
                best = (score, shape, box)
    return best[1], best[2]


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))
