"""Train the "small" VQGAN preset on procedurally drawn scenes and print reconstruction quality over time.

    OMP_NUM_THREADS=2 python benchmarks/bench_image_vq.py --minutes 20 --out /tmp/vq_small

Prints held-out PSNR / codes used every ``--eval-every`` steps and s/step; with ``--out`` saves the tokenizer
as a bundle-ready directory and a PNG grid (top: originals, bottom: reconstructions).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

import torch
from PIL import Image, ImageDraw

from aromni.core.image_tokenizer import build_image_tokenizer, preprocess_batch
from aromni.core.train.image_vq import evaluate, fit_image_vq, scene_accuracy

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 40), (150, 60, 190), (250, 140, 30),
           (30, 30, 30), (240, 240, 240), (120, 120, 120), (60, 200, 200)]


def draw_shapes(n: int, size: int, seed: int) -> list[Image.Image]:
    """Scenes of 1-3 filled circles, squares and triangles in plain colours on a plain background."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        bg, *_ = rng.sample(COLOURS, 1)
        img = Image.new("RGB", (size, size), bg)
        d = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 3)):
            c = rng.choice([c for c in COLOURS if c != bg])
            r = rng.uniform(0.12, 0.3) * size
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            kind = rng.choice(["circle", "square", "triangle"])
            if kind == "circle":
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)
            elif kind == "square":
                d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=c)
            else:
                h = r * math.sqrt(3) / 2
                d.polygon([(cx, cy - r), (cx - h, cy + r / 2), (cx + h, cy + r / 2)], fill=c)
        out.append(img)
    return out


def scene_attrs(n: int, seed: int) -> list[dict]:
    import numpy as np

    from aromni.core.corpus import scenes

    rng = np.random.default_rng(seed)
    return [scenes.sample_scene(rng) for _ in range(n)]


def draw_scenes(n: int, size: int, seed: int) -> list[Image.Image]:
    """The synthetic corpus's scenes (aromni.core.corpus.scenes), drawn at ``size``."""
    from aromni.core.corpus import scenes

    return [scenes.draw(a, size) for a in scene_attrs(n, seed)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--minutes", type=float, default=None, help="estimate steps from the first 10 steps' speed")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--st", action="store_true", help="straight-through codebook instead of EMA")
    ap.add_argument("--data", choices=["scenes", "shapes"], default="scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--cfg", nargs="*", default=[], metavar="KEY=VALUE",
                    help="preset overrides, e.g. ch=16 ch_mult=1,2,4,4 norm_groups=2")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra fit_image_vq options, e.g. restart_every=0 ema_decay=0.99")
    a = ap.parse_args()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    pairs = (kv.split("=", 1) for kv in a.cfg)
    over = {k: tuple(int(x) for x in v.split(",")) if "," in v else int(v) for k, v in pairs}
    tok = build_image_tokenizer(a.preset, seed=a.seed, **over)
    draw = draw_scenes if a.data == "scenes" else draw_shapes
    train = draw(a.n_train, 96, seed=1)  # drawn larger, so the tokenizer's LANCZOS resize is exercised
    held = preprocess_batch(draw(128, 96, seed=2), tok.resolution)
    held_attrs = scene_attrs(200, seed=2) if a.data == "scenes" else None
    held_scenes = draw_scenes(200, 64, seed=2) if held_attrs else None
    steps = a.steps
    if a.minutes:
        t0 = time.perf_counter()
        probe = build_image_tokenizer(a.preset, seed=a.seed, **over)
        fit_image_vq(probe, train[:64], steps=10, batch_size=a.batch_size, lr=a.lr, seed=a.seed, eval_images=16)
        per = (time.perf_counter() - t0) / 10
        steps = int(a.minutes * 60 / per)
        print(f"# {per:.3f} s/step measured -> {steps} steps for {a.minutes} min", file=sys.stderr)
    print(f"# preset {a.preset}: {tok.n_tokens} tokens of {tok.codebook_size}, "
          f"{sum(p.numel() for p in tok.model.parameters()) / 1e6:.2f} M params, threads {torch.get_num_threads()}")
    t0, c0 = time.perf_counter(), time.process_time()

    def on_step(step: int, m: dict) -> None:
        if step % a.eval_every == 0 or step == steps:
            ev = evaluate(tok, held)
            tok.model.eval()
            acc = f"  analyser {scene_accuracy(tok, held_scenes, held_attrs):.1%}" if held_attrs else ""
            tok.model.train()
            print(f"step {step:5d}  {time.perf_counter() - t0:7.1f}s  recon {m['recon']:.4f}  "
                  f"held-out psnr {ev['psnr']:.2f} dB  codes used {ev['codes_used']}  ppl {ev['perplexity']:.0f}{acc}",
                  flush=True)

    extra = {k: float(v) if "." in v or "e" in v else int(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    res = fit_image_vq(tok, train, steps=steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, on_step=on_step,
                       ema=not a.st, **extra)
    ev = evaluate(tok, held)
    cpu = time.process_time() - c0
    print(f"final: {steps} steps in {res['seconds']:.0f} s wall ({res['seconds'] / steps:.3f} s/step), "
          f"{cpu:.0f} s CPU ({cpu / steps:.3f} CPU s/step); train psnr "
          f"{res['psnr']:.2f} dB, held-out psnr {ev['psnr']:.2f} dB, codes used {ev['codes_used']}/{tok.codebook_size}")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        tok.save(a.out)
        imgs = draw(8, 96, seed=3)
        rec = tok.decode(tok.encode(imgs))
        r = tok.resolution
        grid = Image.new("RGB", (8 * r, 2 * r))
        for i, (im, rc) in enumerate(zip(imgs, rec)):
            grid.paste(im.resize((r, r), Image.LANCZOS), (i * r, 0))
            grid.paste(rc, (i * r, r))
        grid.save(os.path.join(a.out, "recon.png"))
        print(f"saved {a.out}/recon.png")


if __name__ == "__main__":
    main()
