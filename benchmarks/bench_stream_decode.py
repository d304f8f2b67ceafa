"""Streaming (chunked) speech decoding vs whole-sequence decoding: first-audio latency and SNR on real speech.

Speech comes from espeak-ng (held-out sentences), is encoded by the codec under test, then decoded twice:
whole (the reference) and through ``tok.stream()`` with codes pushed one at a time (as an LM emits them).

    # original-size WavTokenizer, random weights
    python benchmarks/bench_stream_decode.py --preset wavtokenizer-24k-40 --sweep
    # the small preset after a few minutes of fit_codec on espeak-ng speech (saved for reuse) ...
    python benchmarks/bench_stream_decode.py --preset small --train-steps 400 --save /tmp/small_codec --sweep
    # ... then a decoder-only streaming-consistency fine-tune (codes unchanged)
    python benchmarks/bench_stream_decode.py --weights /tmp/small_codec --stream-steps 150 --sweep

Columns: first-audio codes (codes that must exist before the first audio), the audio they stand for (ms),
decoder compute for the first window (ms, median), SNR of streamed vs whole decode over all sentences (dB) and
for the worst sentence, real-time factor of streamed decoding (compute / audio) and of whole decoding.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import astuple

import numpy as np
import torch

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.", "A red circle sits above a small blue square.",
    "Please describe the picture in one sentence.", "Seven green triangles are arranged in a row.",
    "She sells sea shells by the sea shore.", "The weather today is cold and windy with some rain.",
    "Numbers like twelve, forty two and ninety nine are easy to say.", "How much wood would a woodchuck chuck?",
    "The yellow star is to the left of the purple heart.", "Speech tokens arrive forty times every second.",
    "An orange ball rolls slowly across the wooden floor.", "Two large black squares and one tiny white circle.",
    "Can you hear the difference between these two voices?", "The train leaves at half past nine in the morning.",
    "Bright colours make the shapes easy to recognise.", "We measured the latency of the streaming decoder.",
]
TEST_TEXT = [
    "A small green circle is next to a large red triangle.",
    "Streaming speech should start quickly and sound the same as the full decode.",
    "Tomorrow morning the library opens at eight o'clock.",
    "Five purple squares float above the calm blue water.",
]
VOICES = ["en", "en-us", "en+f3", "en+m3", "en-us+f2"]

SWEEP = [  # (first, chunk, left, right, xfade) in codes
    (8, 8, 40, 4, 2), (12, 10, 60, 6, 2), (14, 10, 60, 6, 0), (12, 10, 120, 8, 4), (12, 16, 120, 8, 4),
    (12, 20, 120, 8, 4), (10, 10, 200, 10, 4), (20, 20, 200, 10, 4),
]


def espeak(text: str, voice: str, rate: int, sample_rate: int) -> np.ndarray:
    from aromni.core.audio_io import load_audio

    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        sys.exit("espeak-ng is required (apt-get install espeak-ng)")
    data = subprocess.run([exe, "-v", voice, "-s", str(rate), "--stdout", text], check=True,
                          capture_output=True).stdout
    return load_audio(data, sample_rate, source=f"espeak:{voice}")


def load_codec(args):
    from aromni.core.bundle import load_tokenizer, read_meta
    from aromni.core.speech_tokenizer import build_speech_tokenizer

    if args.weights:
        spec_path = os.path.join(args.weights, "speech_tokenizer.json")
        spec = json.load(open(spec_path)) if os.path.isfile(spec_path) else read_meta(args.weights)["speech_tokenizer"]
        return load_tokenizer("speech", spec, args.weights)
    return build_speech_tokenizer(args.preset, seed=args.seed)


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    err = float(np.sum((ref.astype(np.float64) - est) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)


def measure(tok, clips: list[torch.Tensor], geom: tuple, reps: int) -> dict:
    from aromni.core.speech_stream import StreamConfig

    cfg = StreamConfig(*geom)
    sig = err = 0.0
    worst = float("inf")
    stream_t = whole_t = audio_s = 0.0
    for codes in clips:
        t0 = time.perf_counter()
        whole = tok.decode(codes)
        whole_t += time.perf_counter() - t0
        dec = tok.stream(cfg)
        out = []
        t0 = time.perf_counter()
        for c in codes:
            out.append(dec.push(c[None]))
        out.append(dec.flush())
        stream_t += time.perf_counter() - t0
        audio_s += len(whole) / tok.sample_rate
        y = np.concatenate(out)
        assert len(y) == len(whole)
        sig += float(np.sum(whole.astype(np.float64) ** 2))
        err += float(np.sum((whole.astype(np.float64) - y) ** 2))
        worst = min(worst, snr_db(whole, y))
    # the first window alone, repeated, for a stable compute time
    window = clips[0][: cfg.first_codes]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        tok.decode_batch(window[None])
        times.append(time.perf_counter() - t0)
    return {"geom": geom, "first_codes": cfg.first_codes,
            "first_ms": 1000 * cfg.first_codes * tok.hop / tok.sample_rate,
            "first_compute_ms": 1000 * float(np.median(times)),
            "snr": 10 * np.log10(sig / err) if err else float("inf"),
            "worst": worst, "rtf_stream": stream_t / audio_s, "rtf_whole": whole_t / audio_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wavtokenizer-24k-40")
    ap.add_argument("--weights", help="directory with speech_tokenizer.json (from --save) or a native bundle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=0, help="fit_codec steps on espeak-ng speech first")
    ap.add_argument("--stream-steps", type=int, default=0,
                    help="then fit_codec(decoder_only=True, stream_weight=10) steps: streaming-consistency fine-tune")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--save", help="save the (trained) codec here")
    ap.add_argument("--sweep", action="store_true", help="measure the geometries in SWEEP")
    ap.add_argument("--geom", type=int, nargs=5, metavar=("FIRST", "CHUNK", "LEFT", "RIGHT", "XFADE"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from aromni.core.speech_stream import StreamConfig

    tok = load_codec(args)
    print(f"codec: {args.weights or args.preset}  {tok.sample_rate} Hz, hop {tok.hop} "
          f"({tok.sample_rate / tok.hop:g} codes/s), {tok.codebook_size} codes, "
          f"{sum(p.numel() for p in tok.net.parameters()) / 1e6:.1f} M params, {args.threads} thread(s)")
    if args.train_steps or args.stream_steps:
        from aromni.core.train.codec import fit_codec

        train = [espeak(t, v, 140 + 13 * i % 60, tok.sample_rate) for v in VOICES for i, t in enumerate(TRAIN_TEXT)]
        log = lambda s, r: print(f"  step {s} loss {r['loss']:.3f} mel {r['mel']:.3f} stream {r['stream']:.4f}",  # noqa
                                 file=sys.stderr) if s % 25 == 0 else None
        for steps, kw in ((args.train_steps, dict(lr=args.lr)),
                          (args.stream_steps, dict(lr=1e-3, decoder_only=True, stream_weight=10.0, stream_from=0.0,
                                                   warmup=10))):
            if steps:
                t0 = time.time()
                res = fit_codec(tok, train, steps=steps, batch_size=args.train_batch, seed=args.seed, on_step=log, **kw)
                print(f"trained {steps} steps x {args.train_batch} x 1 s {kw} in {time.time() - t0:.0f} s: "
                      f"mel loss {res['mel']:.3f}, {res['codes_used']} codes used")
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        spec = tok.save(args.save)
        json.dump(spec, open(os.path.join(args.save, "speech_tokenizer.json"), "w"))
    test = [espeak(t, v, 160, tok.sample_rate) for t, v in zip(TEST_TEXT, ["en", "en+f3", "en-us", "en+m3"])]
    if float(tok.net.quantizer.inited) == 0:
        # an untrained codebook: k-means it on the speech's latents, as the reference does on its first batch,
        # so the codes follow the speech instead of collapsing onto one entry
        from aromni.core.train.codec import kmeans_init
        with torch.inference_mode():
            z = torch.cat([tok.net.encode_latents(torch.from_numpy(w)[None])[0].T for w in test])
        kmeans_init(tok.net.quantizer, z.clone(), 20, torch.Generator().manual_seed(args.seed), len(z))
        print(f"untrained codebook: k-means initialised on the {len(z)} test latents")
    clips = [tok.encode(w) for w in test]
    # how well the codec reproduces the speech itself (log-mel distance; context for the SNR numbers)
    from aromni.core.train.codec import SpectralLoss
    loss = SpectralLoss(tok.sample_rate)
    with torch.inference_mode():
        mel = np.mean([float(loss(torch.from_numpy(tok.decode(c, len(w)))[None], torch.from_numpy(w)[None])[0])
                       for c, w in zip(clips, test)])
    print(f"test speech: {len(test)} sentences, {sum(map(len, test)) / tok.sample_rate:.1f} s, "
          f"{sum(map(len, clips))} codes; codec log-mel L1 vs input {mel:.3f}")
    geoms = SWEEP if args.sweep else [tuple(args.geom)] if args.geom else [astuple(StreamConfig())]
    print("first chunk left right xfade | first codes  audio ms  compute ms | SNR dB  worst dB | RTF stream  whole")
    for g in geoms:
        r = measure(tok, clips, g, args.reps)
        print(f"{g[0]:5d} {g[1]:5d} {g[2]:4d} {g[3]:5d} {g[4]:5d} | {r['first_codes']:11d} {r['first_ms']:9.0f} "
              f"{r['first_compute_ms']:11.1f} | {r['snr']:6.1f} {r['worst']:9.1f} | {r['rtf_stream']:10.3f} "
              f"{r['rtf_whole']:6.3f}", flush=True)


if __name__ == "__main__":
    main()
