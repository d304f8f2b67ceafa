"""Where T2I (and speech->image) fails on the synthetic corpus: per-attribute accuracy, and decoding settings.

    python scripts/t2i_analysis.py attributes --report eval/t2i.json --data corpus/heldout.jsonl
    python scripts/t2i_analysis.py sweep --data corpus/heldout.jsonl [--model DIR] [--limit 48] [--split train]

``attributes``: for every single-object item of an `aromni eval t2i|s2i` report whose image shows one object,
how often the analyser's shape, colour, size and position equal the reference's. ``sweep``: on the first
``--limit`` t2i prompts of ``--split`` (default heldout; seed 0), under several image decoding settings
(each set explicitly, so a bundle's own defaults do not blur them; "best of N": the bundle's reranking by its
own captioner), the share drawn with every attribute right and the share with shape, colour and position right.
docs/default-model.md's T2I breakdown and the bundle's decode.yaml come from these commands.
"""
from __future__ import annotations

import argparse
import json
import sys

KEYS = ("shape", "colour", "size", "position")
ONE = {"candidates": 1, "cfg": True}
SETTINGS = {"sampled": {**ONE, "image_greedy": False, "image_temperature": 1.0},
            "temperature 0.5": {**ONE, "image_greedy": False, "image_temperature": 0.5},
            "greedy": {**ONE, "image_greedy": True}, "greedy, no cfg": {**ONE, "image_greedy": True, "cfg": False},
            "sampled, no cfg": {**ONE, "image_greedy": False, "image_temperature": 1.0, "cfg": False},
            "best of 4": {"candidates": 4, "image_greedy": True, "image_temperature": 0.7, "cfg": False},
            "best of 16": {"candidates": 16, "image_greedy": True, "image_temperature": 0.7, "cfg": False}}


def _manifest(path: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as f:
        return {d["id"]: d for d in map(json.loads, filter(str.strip, f))}


def attributes(report: str, data: str) -> dict[str, tuple[int, int]]:
    """attribute -> (right, compared)."""
    ref_by_id = _manifest(data)
    with open(report, encoding="utf-8") as f:
        items = json.load(f)["items"]
    acc = {k: [0, 0] for k in KEYS}
    for it in items:
        ref = ref_by_id[it["id"]]["attrs"]["objects"]
        got = it["analysed"]["objects"]
        if len(ref) != 1 or len(got) != 1:
            continue
        for k in KEYS:
            if k in ref[0]:
                acc[k][0] += ref[0][k] == got[0].get(k)
                acc[k][1] += 1
    return {k: (a, b) for k, (a, b) in acc.items()}


def sweep(data: str, model: str | None, limit: int, split: str = "heldout") -> dict[str, tuple[float, float]]:
    """setting -> (share with every attribute right, share with shape+colour+position right)."""
    from aromni.core import tasks
    from aromni.core.api import load
    from aromni.core.corpus import scenes
    from aromni.core.decoding import options_for
    from aromni.core.eval.runner import _scene_verdicts

    omni = load(model, device="cpu", dtype="fp32")
    with open(data, encoding="utf-8") as f:
        lines = [json.loads(s) for s in f if s.strip()]
    items = [d for d in lines if d["task"] == "t2i" and d.get("split") == split and d.get("attrs")][:limit]
    out = {}
    for name, kw in SETTINGS.items():
        imgs = tasks.t2i(omni, [d["text"] for d in items], n=1, opts=options_for("t2i", batch_size=8, **kw), seed=0)
        verdicts = [_scene_verdicts(scenes.analyse(im), d["attrs"], d["text"]) for im, d in zip(imgs, items)]
        out[name] = (sum(v["attrs_ok"] for v in verdicts) / len(items), sum(v["scp_ok"] for v in verdicts) / len(items))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("attributes")
    p.add_argument("--report", required=True)
    p.add_argument("--data", required=True)
    p = sub.add_parser("sweep")
    p.add_argument("--data", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--limit", type=int, default=48)
    p.add_argument("--split", default="heldout", help="manifest split to take the prompts from")
    a = ap.parse_args(argv)
    if a.cmd == "attributes":
        for k, (right, n) in attributes(a.report, a.data).items():
            print(f"{k:9s} {right / max(1, n):6.1%}  ({right}/{n})")
    else:
        print(f"{'setting':16s} {'all':>6s} {'s+c+p':>6s}")
        for name, (acc, scp) in sweep(a.data, a.model, a.limit, a.split).items():
            print(f"{name:16s} {acc:6.1%} {scp:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
