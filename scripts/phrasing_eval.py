"""T2I on held-out scenes by how the prompt is phrased: the canonical caption, a held-out phrasing and a
training-frame phrasing of the same scene (core/corpus/phrasing.py), with one candidate and with the model's
default best-of-N.

    python scripts/phrasing_eval.py [--model DIR] [--n 60] [--seed 7] [--out phrasing/] [--candidates 1,default]
                                    [--eval-args "--cfg-text 1.5"]

Builds the held-out split of the default corpus (seed 0, no speech) into OUT/corpus, writes OUT/phrasings.jsonl
(N scenes x 3 phrasings, eval groups "canonical", "held-out phrasing", "training-frame phrasing"), runs
``aromni eval t2i`` once per candidates setting (OUT/c<setting>.json) and prints a Markdown table of the share
of drawings with every attribute right, per group.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

GROUPS = ("canonical", "held-out phrasing", "training-frame phrasing")


def write_manifest(corpus: str, path: str, n: int, seed: int) -> int:
    from aromni.core.corpus import phrasing as F

    rng = np.random.default_rng(seed)
    with open(os.path.join(corpus, "heldout.jsonl"), encoding="utf-8") as f:
        scenes = [json.loads(line) for line in f if '"task": "t2i"' in line][:n]
    with open(path, "w", encoding="utf-8") as f:
        for i, line in enumerate(scenes):
            a = line["attrs"]
            texts = (line["text"], F.phrase(a, rng, heldout=True), F.phrase(a, rng))
            for g, text in zip(GROUPS, texts):
                f.write(json.dumps({"task": "t2i", "id": f"{i}-{g}", "text": text, "attrs": a, "group": g}) + "\n")
    return len(scenes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=60, help="held-out scenes (each in three phrasings)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the phrasings")
    ap.add_argument("--out", default="phrasing")
    ap.add_argument("--candidates", default="1,default", help="comma-separated: numbers, or default")
    ap.add_argument("--eval-args", default="", help="more options for every `aromni eval t2i` (e.g. CFG's)")
    args = ap.parse_args()
    corpus = os.path.join(args.out, "corpus")
    aromni = [sys.executable, "-m", "aromni"]
    if not os.path.exists(os.path.join(corpus, "heldout.jsonl")):
        subprocess.run(aromni + ["corpus", corpus, "--no-speech", "--seed", "0", "-q"], check=True)
    manifest = os.path.join(args.out, "phrasings.jsonl")
    n = write_manifest(corpus, manifest, args.n, args.seed)
    rows = {}
    for c in args.candidates.split(","):
        report = os.path.join(args.out, f"c{c}.json")
        cmd = aromni + ["eval", "t2i", "--data", manifest, "-q", "-o", report, "--seed", "0"]
        cmd += [] if c == "default" else ["--candidates", c]
        cmd += ["--model", args.model] if args.model else []
        cmd += shlex.split(args.eval_args)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(report, encoding="utf-8") as f:
            by = json.load(f)["metrics"]["by_group"]
        rows[c] = {g: by[g]["attr_accuracy"] for g in GROUPS}
    print(f"| candidates | {' | '.join(GROUPS)} |\n|---|" + "---|" * len(GROUPS))
    for c, r in rows.items():
        print(f"| {c} | " + " | ".join(f"{100 * r[g]:.1f}%" for g in GROUPS) + " |")
    print(f"\n{n} held-out scenes, each in three phrasings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
