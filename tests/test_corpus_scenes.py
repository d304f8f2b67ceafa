"""Scenes: drawing, captions and the analyser (exhaustive over attribute combinations, clean and degraded)."""
import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageFilter

from aromni.core.corpus import scenes as S


def singles(rng):
    """Every single-object combination on every background, with random jitter (corners included)."""
    out = []
    for s, c, z, p, bg in itertools.product(S.SHAPES, S.COLOURS, S.SIZES, S.POSITIONS, S.BACKGROUNDS):
        off = [int(rng.integers(-S.MAX_JITTER, S.MAX_JITTER + 1)) for _ in range(2)]
        out.append({"background": bg, "objects": [{"shape": s, "colour": c, "size": z, "position": p, "offset": off}]})
    return out


def pairs(rng):
    out = []
    for (p1, p2), s1, s2, c1, c2 in itertools.product(S.PAIRS, S.SHAPES, S.SHAPES, S.COLOURS, S.COLOURS):
        if c1 != c2:
            bg = list(S.BACKGROUNDS)[int(rng.integers(len(S.BACKGROUNDS)))]
            out.append({"background": bg, "objects": [
                {"shape": s1, "colour": c1, "position": p1, "offset": [int(v) for v in rng.integers(-2, 3, 2)]},
                {"shape": s2, "colour": c2, "position": p2, "offset": [int(v) for v in rng.integers(-2, 3, 2)]}]})
    return out


def degrade(img, rng, blur=1.2, noise=8.0, coarse=None):
    """Approximate a VQ reconstruction: optional down/up-sampling, colour shift, blur, pixel noise."""
    if coarse:
        img = img.resize((coarse, coarse), Image.BILINEAR).resize(img.size, Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32) * rng.uniform(0.88, 1.08, 3) + rng.uniform(-15, 15, 3)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(img, dtype=np.float32) + rng.normal(0, noise, (*img.size[::-1], 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_analyse_recovers_every_single_object_scene():
    for a in singles(np.random.default_rng(0)):
        got = S.analyse(S.draw(a))
        assert S.attrs_match(got, a, S.OBJECT_KEYS + ("background",)), (a, got)


def test_analyse_recovers_every_two_object_scene():
    for a in pairs(np.random.default_rng(1)):
        got = S.analyse(S.draw(a))
        assert S.attrs_match(got, a, S.OBJECT_KEYS + ("background",)), (a, got)
        assert [o["position"] for o in got["objects"]] == [o["position"] for o in a["objects"]]


def test_analyse_survives_blur_noise_and_colour_shift():
    rng = np.random.default_rng(2)
    bad = [a for a in singles(rng) if not S.attrs_match(S.analyse(degrade(S.draw(a), rng)), a)]
    assert bad == []
    bad = [a for a in pairs(rng)[::4] if not S.attrs_match(S.analyse(degrade(S.draw(a), rng)), a)]
    assert bad == []


def test_analyse_mostly_survives_coarse_reconstruction():
    # 16x16 then back up: coarser than an 8x8-token VQ decoder; small stars may go, little else
    rng = np.random.default_rng(3)
    cases = singles(rng)
    ok = sum(S.attrs_match(S.analyse(degrade(S.draw(a), rng, blur=0.8, coarse=16)), a) for a in cases)
    assert ok / len(cases) >= 0.97


def test_analyse_other_resolutions_and_empty_image():
    a = {"background": "black", "objects": [{"shape": "triangle", "colour": "purple", "size": "small",
                                             "position": "top", "offset": [1, 0]}]}
    for size in (32, 128, 256):
        img = S.draw(a, size)
        assert img.size == (size, size)
        assert S.attrs_match(S.analyse(img), a)
    assert S.analyse(Image.new("RGB", (64, 64), (255, 255, 255))) == {"background": "white", "objects": []}
    # a stray speck is not an object
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    img.paste((220, 30, 30), (30, 30, 33, 33))
    assert S.analyse(img)["objects"] == []


def test_draw_is_deterministic():
    a = S.sample_scene(np.random.default_rng(5))
    png = []
    for _ in range(2):
        buf = io.BytesIO()
        S.draw(a).save(buf, format="PNG")
        png.append(buf.getvalue())
    assert png[0] == png[1]


@pytest.mark.parametrize("variant", range(S.N_VARIANTS))
def test_captions_parse_back(variant):
    rng = np.random.default_rng(variant)
    for a in singles(rng)[::3] + pairs(rng)[::7]:
        text = S.caption(a, variant)
        assert S.attrs_match(S.parse_caption(text), a), text
        assert S.attrs_match(S.parse_caption(text.upper() + "."), a)


def test_canonical_caption_form():
    a = {"objects": [{"shape": "circle", "colour": "red", "size": "small", "position": "left"}]}
    assert S.caption(a) == "a small red circle on the left"
    two = {"objects": [{"shape": "circle", "colour": "red", "position": "left"},
                       {"shape": "square", "colour": "blue", "position": "right"}]}
    assert S.caption(two) == "a red circle on the left and a blue square on the right"


def test_parse_caption_variants_and_synonyms():
    p = S.parse_caption("A big red ball, in the middle, on a white background!")
    assert p == {"background": "white", "objects": [{"size": "large", "colour": "red", "shape": "circle",
                                                     "position": "centre"}]}
    p = S.parse_caption("On the left there is a little cyan star and on the right a yellow box")
    assert p["objects"] == [{"position": "left", "size": "small", "colour": "cyan", "shape": "star"},
                            {"position": "right", "colour": "yellow", "shape": "square"}]
    # a clause without a shape adds to the previous object
    assert S.parse_caption("a square that is green and small")["objects"] == [
        {"shape": "square", "colour": "green", "size": "small"}]
    assert S.parse_caption("nothing to see here") == {"objects": []}


def test_attrs_match_rules():
    ref = {"background": "white", "objects": [{"shape": "star", "colour": "red", "size": "large", "position": "top"}]}
    same = {"objects": [{"shape": "star", "colour": "red", "size": "large", "position": "top"}]}
    assert S.attrs_match(same, ref)
    assert not S.attrs_match(same, ref, S.OBJECT_KEYS + ("background",))
    wrong = {"objects": [{"shape": "star", "colour": "blue", "size": "large", "position": "top"}]}
    assert not S.attrs_match(wrong, ref)
    assert S.attrs_match(wrong, ref, keys=("shape", "size", "position"))
    missing_size = {"objects": [{"shape": "star", "colour": "red", "position": "top"}]}
    assert not S.attrs_match(missing_size, ref)
    assert not S.attrs_match({"objects": same["objects"] * 2}, ref)
    assert not S.attrs_match({"objects": []}, ref)
    # two-object references state no size: any size is accepted, order does not matter
    two = {"objects": [{"shape": "circle", "colour": "red", "position": "left"},
                       {"shape": "square", "colour": "blue", "position": "right"}]}
    pred = {"objects": [{"shape": "square", "colour": "blue", "size": "small", "position": "right"},
                        {"shape": "circle", "colour": "red", "size": "large", "position": "left"}]}
    assert S.attrs_match(pred, two)


def test_heldout_combos_keep_every_pair_in_training():
    h = S.heldout_combos(0)
    assert h == S.heldout_combos(0) and h != S.heldout_combos(1)
    assert len(h) == round(0.125 * len(S.all_combos()))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert len({(c[i], c[j]) for c in h}) == len(h)


def test_sample_scene_respects_allowed_combos():
    allowed = set(S.all_combos()) - S.heldout_combos(0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = S.sample_scene(rng, combos=allowed)
        assert all(S.combo(o) in allowed for o in a["objects"])
        if len(a["objects"]) == 2:
            assert a["objects"][0]["colour"] != a["objects"][1]["colour"]
            assert tuple(o["position"] for o in a["objects"]) in S.PAIRS
