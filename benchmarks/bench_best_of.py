"""Best of N on the bundled default model: what reranking costs, and how the batch size changes it.

Prints, for T2I prompts of the synthetic corpus: seconds per prompt with one argmax drawing (without CFG; and
with CFG at text scale 1.5, the bundle's default) and with the best of 16 (unguided) at several ``--batch-size``
values, plus the shares of that time spent scoring candidates with the model's own captioner (the prompt's
caption score, and the candidates' own captions for their scene votes).

    .venv/bin/python benchmarks/bench_best_of.py [--prompts 8] [--batch-sizes 8,16,32,64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PROMPTS = ["a large green star on the right", "a small blue circle at the top", "a large red square on the left",
           "a small yellow triangle in the centre", "a large purple circle at the bottom",
           "a small cyan star on the left", "a large white square at the top", "a small red triangle on the right"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch-sizes", default="8,16,32,64")
    ap.add_argument("--candidates", type=int, default=16)
    a = ap.parse_args()

    from aromni.core import rerank, tasks
    from aromni.core.api import load
    from aromni.core.decoding import options_for

    omni = load(None, device="cpu", dtype="fp32")
    texts = (PROMPTS * (a.prompts // len(PROMPTS) + 1))[: a.prompts]
    scoring = {"caption_scores": 0.0, "scene_votes": 0.0}

    def timed(name):
        real = getattr(rerank, name)

        def run(*args, **kw):
            t = time.perf_counter()
            out = real(*args, **kw)
            scoring[name] += time.perf_counter() - t
            return out
        return run

    for name in scoring:
        setattr(rerank, name, timed(name))
    tasks.t2i(omni, texts[:1], opts=options_for("t2i", candidates=1), seed=0)  # warm-up
    print(f"{'setting':34s} {'s/prompt':>9s} {'scoring':>8s} {'votes':>6s}")
    for name, kw in [("1 drawing, argmax, no CFG", dict(candidates=1, image_greedy=True, cfg=False)),
                     ("1 drawing, argmax, CFG 1.5", dict(candidates=1, image_greedy=True, cfg=True, cfg_text=1.5))]:
        t = time.perf_counter()
        tasks.t2i(omni, texts, opts=options_for("t2i", batch_size=8, **kw), seed=0)
        print(f"{name:34s} {(time.perf_counter() - t) / len(texts):9.3f} {'-':>8s} {'-':>6s}")
    for bs in (int(b) for b in a.batch_sizes.split(",")):
        scoring.update(caption_scores=0.0, scene_votes=0.0)
        t = time.perf_counter()
        tasks.t2i(omni, texts, opts=options_for("t2i", batch_size=bs, candidates=a.candidates, image_greedy=True,
                                                image_temperature=0.7, cfg=False), seed=0)
        dt = time.perf_counter() - t
        print(f"{f'best of {a.candidates}, --batch-size {bs}':34s} {dt / len(texts):9.3f} "
              f"{scoring['caption_scores'] / dt:8.0%} {scoring['scene_votes'] / dt:6.0%}")


if __name__ == "__main__":
    main()
