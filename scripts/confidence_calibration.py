"""Calibrate the low-confidence rules of `aromni asr` and `aromni caption` (core/confidence.py) for a model.

    python scripts/confidence_calibration.py [--model DIR] [--data HELDOUT.jsonl] [--n 120] [--n-in 300]
                                             [--quantile 0.03] [--write] [--out calib.json]

In-domain: held-out lines of the model's own corpus: ``--data`` names a corpus manifest (a build's
``corpus/heldout.jsonl``: its held-out ASR clips and caption scenes as written); without it the held-out lines of
`aromni corpus --preset default --seed 0` (the bundled model's recipe) are synthesised (espeak-ng) and drawn here.
Out-of-domain (evaluation only, never used to set a threshold): real human speech from Debian packages
(core/eval/real_speech.py; left out with a note when they are not installed), everyday sentences outside the corpus
said by an espeak-ng voice, and for captions pictures found on this machine (matplotlib's sample data,
/usr/share/doc) plus procedural pictures (noise, gradients, stripes, text). The in-domain items (``--n-in``) are
split in two halves: the task's rules (core/confidence.py RULE_MEASURES) get thresholds at an equal share of the
first half each, the largest share at which they together flag at most ``--quantile`` of it (3 %, so that the second
half stays within 5 % despite the sampling noise of a few hundred items); the report gives the share flagged (by any
rule) in the second half and in each out-of-domain group, the AUROC of each measure (in-domain vs out-of-domain)
and, per measure, the in-domain share a threshold flagging 80 % of out-of-domain items would flag. ``--write``
stores the thresholds in the model's aromni.json (its ``confidence`` entry), where the commands read them.
Prints a Markdown table; --out writes every item's scores.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from aromni.core.confidence import FIT_MEASURES, RULE_MEASURES, rules_entry, why_low
from aromni.core.corpus import build as B
from aromni.core.corpus import scenes as S
from aromni.core.corpus import speech as P
from aromni.core.eval import real_speech

EVERYDAY = (
    "open the door and the window", "what time is it now", "please call me back tomorrow morning",
    "i would like a cup of coffee", "turn off the lights in the kitchen", "where is the nearest train station",
    "the meeting starts at half past nine", "can you help me with my homework", "it is going to rain this afternoon",
    "my phone number is five five five one two three four", "set an alarm for seven thirty",
    "how much does this jacket cost", "we are out of milk and eggs", "the children are playing in the garden",
    "send the report to the manager", "i lost my keys somewhere in the house", "the bus is late again today",
    "play some music in the living room", "remind me to buy flowers for my mother", "the soup is too hot to eat",
)


def auroc(ind: list[float], ood: list[float]) -> float:
    """P(an in-domain score > an out-of-domain score), ties counted half (higher score = more confident)."""
    a, b = np.asarray(ind)[:, None], np.asarray(ood)[None, :]
    return float(((a > b).sum() + 0.5 * (a == b).sum()) / (a.size * b.size))


def heldout_lines(tasks: tuple[str, ...], data: str | None = None) -> list[dict]:
    """Held-out lines of ``tasks``: from the manifest ``data`` (media paths made absolute), else planned from the
    default corpus recipe (media to be synthesised)."""
    if data is None:
        builders, _ = B.plan("", B.PRESETS["default"], 0, 16000, True)
        return [ln for ln in builders[1].lines if ln["task"] in tasks]
    root = os.path.dirname(os.path.abspath(data))
    out = []
    with open(data, encoding="utf-8") as f:
        for line in f:
            ln = json.loads(line)
            if ln["task"] in tasks and ln.get("split", "heldout") == "heldout":
                for k in ("audio", "image"):
                    if ln.get(k):
                        ln[k] = os.path.join(root, ln[k])
                out.append(ln)
    return out


def sample(items: list, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(items))[:n]
    return [items[int(i)] for i in sorted(idx)]


def asr_sets(n: int, n_in: int, sr: int, data: str | None = None) -> dict[str, list[tuple[str, np.ndarray]]]:
    from aromni.core.audio_io import load_audio

    lines = sample(heldout_lines(("asr",), data), n_in, 1)
    if data is None:
        ind = [(ln["text"], P.synthesize(ln["text"], P.Voice(ln["voice"], ln["speed"]), sr)) for ln in lines]
    else:
        ind = [(ln["text"], load_audio(ln["audio"], sr, source=ln["audio"])) for ln in lines]
    sets = {"in-domain (held-out corpus clips)": ind}
    if P.espeak_path() is not None:
        voice = P.Voice(P.INPUT_VOICES[0], 165)
        sets["espeak-ng, everyday sentences"] = [(s, P.synthesize(s, voice, sr)) for s in EVERYDAY]
    why = real_speech.available()
    if why:
        print(f"confidence_calibration: no real speech in the out-of-domain sets: {why}", file=sys.stderr)
        return sets
    for g in real_speech.GROUPS:
        clips = [c for c in real_speech.clips((g,))]
        clips = sample(clips, n, 2)
        sets[f"real speech, {g}"] = [(c.text, load_audio(c.audio, sr, source=c.audio)) for c in clips]
    return sets


def procedural(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        elif kind == 1:
            x = np.linspace(0, 1, 64)
            c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            a = (c0[None, None] * (1 - x)[None, :, None] + c1[None, None] * x[None, :, None]).repeat(64, 0)
            a = a.astype(np.uint8)
        elif kind == 2:
            w = int(rng.integers(2, 9))
            a = ((np.indices((64, 64)).sum(0) // w) % 2)[..., None] * rng.integers(0, 256, 3)
            a = a.astype(np.uint8)
        else:
            im = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 256, 3)))
            ImageDraw.Draw(im).text((4, 24), "".join(chr(int(c)) for c in rng.integers(65, 91, 6)),
                                    fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            out.append(im)
            continue
        out.append(Image.fromarray(a))
    return out


def found_images(n: int) -> list[tuple[str, Image.Image]]:
    import matplotlib

    pats = [os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "*.[pj]*g"),
            "/usr/share/doc/**/*.png", "/usr/share/doc/**/*.jpg"]
    paths = sorted({p for pat in pats for p in glob.glob(pat, recursive=True) if os.path.getsize(p) > 8000})
    out = []
    for p in sample(paths, n, 3):
        try:
            out.append((p, Image.open(p).convert("RGB")))
        except OSError:
            continue
    return out


def caption_sets(n: int, n_in: int, data: str | None = None) -> dict[str, list[tuple[str, Image.Image]]]:
    lines = sample(heldout_lines(("caption",), data), n_in, 4)
    if data is None:
        size = B.PRESETS["default"].image_size
        ind = [(ln["text"], S.draw(ln["attrs"], size)) for ln in lines]
    else:
        ind = [(ln["text"], Image.open(ln["image"]).convert("RGB")) for ln in lines]
    return {"in-domain (held-out scenes)": ind,
            "pictures found on this machine": found_images(n),
            "procedural (noise, gradients, stripes, text)": [("", im) for im in procedural(min(n, 40), 5)]}


MEASURES = ("avg_logprob", "first_logprob", "min_logprob") + FIT_MEASURES


def union_limits(task: str, cal: list, quantile: float) -> list[tuple[str, str, float]]:
    """The task's rules (core/confidence.py RULE_MEASURES) with each threshold at the same per-rule share ``q`` of
    ``cal``, ``q`` the largest (on a grid of 200) at which the rules together flag at most ``quantile`` of ``cal``."""
    def limits_at(q: float) -> list[tuple[str, str, float]]:
        return [(m, op, float(np.quantile([getattr(a.confidence, m) for a in cal], q if op == "<" else 1 - q)))
                for m, op in RULE_MEASURES[task]]

    best = limits_at(0.0)
    for q in np.linspace(0.0, quantile, 201)[1:]:
        lim = limits_at(float(q))
        if sum(bool(why_low(a.confidence, tuple(lim))) for a in cal) > quantile * len(cal):
            break
        best = lim
    return best


def report(task: str, answers: dict, quantile: float) -> tuple[list[str], dict]:
    """Thresholds from in-domain half A (``union_limits``: together the rules flag at most ``quantile`` of it);
    shares flagged (any rule) in half B and in each out-of-domain group; AUROC of every measure; for each rule's
    measure alone, the in-domain share a threshold flagging 80 % of out-of-domain items flags."""
    ind_name = next(iter(answers))
    ind = answers[ind_name]
    cal, test = ind[0::2], ind[1::2]
    ood_all = [a for k, v in answers.items() if k != ind_name for a in v]

    def score(a, key):  # higher = more confident
        x = getattr(a.confidence, key)
        return None if x is None else (-x if key in FIT_MEASURES else x)

    rows, limits = [], union_limits(task, cal, quantile)
    for measure, op, thr in limits:
        q = sum(bool(why_low(a.confidence, ((measure, op, thr),))) for a in cal) / max(1, len(cal))
        rows.append(f"| {task} | threshold: {measure} {op} {thr:.4f} ({100 * q:.1f}% of in-domain half A) | | "
                    f"{len(cal)} |")
        sc_ood = sorted(score(a, measure) for a in ood_all)
        if not sc_ood:
            continue
        t80 = sc_ood[int(0.8 * len(sc_ood))]
        share = sum(score(a, measure) < t80 for a in ind) / len(ind)
        rows.append(f"| {task} | {measure} alone: in-domain flagged at a threshold flagging 80% of out-of-domain "
                    f"| {100 * share:.1f}% | {len(ind)} |")
    for key in MEASURES:
        if ood_all and all(score(a, key) is not None for a in ind + ood_all):
            rows.append(f"| {task} | AUROC in-domain vs out-of-domain, {key} | "
                        f"{auroc([score(a, key) for a in ind], [score(a, key) for a in ood_all]):.3f} | "
                        f"{len(ind)} / {len(ood_all)} |")
    out = {"rules": limits, "groups": {}}
    for name, group in [(f"{ind_name}, half B", test)] + [(k, v) for k, v in answers.items() if k != ind_name]:
        flagged = sum(bool(why_low(a.confidence, tuple(limits))) for a in group)
        rows.append(f"| {task} | flagged: {name} | {100 * flagged / max(1, len(group)):.1f}% | {len(group)} |")
        out["groups"][name] = {"n": len(group), "flagged": flagged, "text": [a.text for a in group],
                               **{k: [getattr(a.confidence, k) for a in group] for k in MEASURES}}
    return rows, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--n", type=int, default=120, help="items per out-of-domain group (at most)")
    ap.add_argument("--n-in", type=int, default=300, help="in-domain items (at most; half set the thresholds)")
    ap.add_argument("--quantile", type=float, default=0.03,
                    help="share of in-domain half A the rules together may flag")
    ap.add_argument("--tasks", default="asr,caption")
    ap.add_argument("--out", default=None, help="JSON with every item's scores")
    ap.add_argument("--data", default=None, help="in-domain held-out lines from this corpus manifest")
    ap.add_argument("--write", action="store_true", help="store the rules in the model's aromni.json")
    a = ap.parse_args()
    from aromni.core import tasks
    from aromni.core.api import DEFAULT_DIR, load

    omni = load(a.model)
    rows = ["| task | measure | value | items |", "|---|---|---|---|"]
    out = {}
    for task in a.tasks.split(","):
        if task == "asr":
            sets = asr_sets(a.n, a.n_in, omni.speech.sample_rate, a.data)
            answers = {k: tasks.asr_answers(omni, [w for _, w in v], seed=0) for k, v in sets.items()}
        else:
            sets = caption_sets(a.n, a.n_in, a.data)
            answers = {k: tasks.caption_answers(omni, [im for _, im in v], seed=0, image_error=True)
                       for k, v in sets.items()}
        r, out[task] = report(task, answers, a.quantile)
        rows += r
    print("\n".join(rows))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    if a.write:
        meta_path = os.path.join(a.model or DEFAULT_DIR, "aromni.json")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        meta["confidence"] = rules_entry({t: tuple(map(tuple, r["rules"])) for t, r in out.items()})
        with open(meta_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        os.replace(meta_path + ".tmp", meta_path)
        print(f"confidence_calibration: rules written to {meta_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
