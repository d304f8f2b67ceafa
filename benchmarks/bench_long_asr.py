#!/usr/bin/env python3
"""Long-audio ASR against the same sentences clip by clip.

N corpus sentences are spoken by espeak-ng in the training input voices (core/corpus/speech.py), each trimmed
as the corpus trims its clips, and joined with short pauses into one recording. Both the recording and the
clips are written as WAV files, read back as ``aromni asr`` reads its inputs (``load_audio``) and transcribed
with ``tasks.asr`` (the command's one core call), greedy, seed 0. Corpus WER (jiwer, normalised text) of the
long file's transcript against all sentences joined, and of the clips against their sentences.

    .venv/bin/python benchmarks/bench_long_asr.py                 # ~2 minutes of audio, bundled model
    .venv/bin/python benchmarks/bench_long_asr.py --n 16 --json   # ~30 s
    .venv/bin/python benchmarks/bench_long_asr.py --cli           # the long file through `aromni asr` too
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from aromni.core.threads import cpu_name


def speak(text: str, voice, sample_rate: int) -> np.ndarray:
    """espeak-ng says ``text`` into a WAV file, read back and trimmed as the corpus's clips are."""
    from aromni.core.audio_io import load_audio
    from aromni.core.corpus import speech as P

    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run([P.require_espeak(), "-v", voice.name, "-s", str(voice.speed), "-w", f.name],
                       input=text.encode(), check=True, capture_output=True)
        return P.trim_silence(load_audio(f.name, sample_rate), sample_rate)


def make_recording(n: int, seed: int, sample_rate: int, pause: tuple[float, float]
                   ) -> tuple[list[str], list[np.ndarray], np.ndarray, list[str]]:
    """(sentences in written form, their clips, the clips joined with pauses, voice names)."""
    from aromni.core.corpus import speech as P
    from aromni.core.corpus.sentences import split_sentences, written

    rng = np.random.default_rng(seed)
    train, held = split_sentences(0)
    pool = list(held) + [s for s in train if len(s.split()) >= 3]  # held-out first, then training sentences
    texts = [pool[i] for i in rng.permutation(len(pool))[:n]] if n <= len(pool) else \
        [pool[int(i)] for i in rng.integers(0, len(pool), n)]
    voices = P.input_voices()
    chosen = [voices[int(i)] for i in rng.integers(0, len(voices), len(texts))]
    clips = [speak(written(t), v, sample_rate) for t, v in zip(texts, chosen)]
    parts: list[np.ndarray] = []
    for k, c in enumerate(clips):
        if k:
            parts.append(np.zeros(int(rng.uniform(*pause) * sample_rate), dtype=np.float32))
        parts.append(c)
    return [written(t) for t in texts], clips, np.concatenate(parts), [f"{v.name}@{v.speed}" for v in chosen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="sentences (60 are about 2 minutes with the pauses)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pause", type=float, nargs=2, default=(0.3, 0.8), metavar=("MIN", "MAX"),
                    help="pause between sentences, seconds (uniform)")
    ap.add_argument("--model", default=None, help="model (default: the bundled one)")
    ap.add_argument("--window", type=float, default=None, help="asr window_s (default: the task's)")
    ap.add_argument("--cli", action="store_true", help="also transcribe the long file with `aromni asr`")
    ap.add_argument("--keep", default=None, help="directory to keep the WAV files and transcripts in")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from aromni.core import tasks
    from aromni.core.api import load
    from aromni.core.audio_io import load_audio, write_wav
    from aromni.core.eval.wer import corpus_wer, word_errors

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    omni = load(args.model, device="cpu")
    sr = omni.speech.sample_rate
    refs, clips, long_wav, voices = make_recording(args.n, args.seed, sr, tuple(args.pause))
    out_dir = args.keep or tempfile.mkdtemp(prefix="bench_long_asr_")
    os.makedirs(out_dir, exist_ok=True)
    clip_paths = []
    for k, c in enumerate(clips):
        clip_paths.append(os.path.join(out_dir, f"clip{k:03d}.wav"))
        write_wav(clip_paths[-1], c, sr)
    long_path = os.path.join(out_dir, "long.wav")
    write_wav(long_path, long_wav, sr)

    kw = {} if args.window is None else {"window_s": args.window}
    t0 = time.perf_counter()
    clip_hyps = tasks.asr(omni, [load_audio(p, sr, resampler=omni.speech.resampler) for p in clip_paths], seed=0)
    t_clips = time.perf_counter() - t0
    long_in = load_audio(long_path, sr, resampler=omni.speech.resampler)
    windows = tasks.asr_windows(omni, long_in, tasks.model_options(omni, None, "asr"), **kw)
    t0 = time.perf_counter()
    long_hyp = tasks.asr(omni, [long_in], seed=0, **kw)[0]
    t_long = time.perf_counter() - t0
    clip_wer = corpus_wer(refs, clip_hyps)
    long_wer = word_errors(" ".join(refs), long_hyp)
    result = {"sentences": len(refs), "audio_s": round(len(long_wav) / sr, 1), "windows": len(windows),
              "window_s_max": round(max(len(w) for w in windows) / sr, 2),
              "clip_wer": round(100 * clip_wer.wer, 1), "long_wer": round(100 * long_wer.wer, 1),
              "long_errors": long_wer.to_dict(), "clip_errors": clip_wer.to_dict(),
              "clips_s": round(t_clips, 1), "long_s": round(t_long, 1), "cpu": cpu_name(),
              "threads": torch.get_num_threads(), "seed": args.seed, "pause": list(args.pause)}
    if args.cli:
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        cmd = [sys.executable, "-m", "aromni", "asr", "--seed", "0", long_path] + \
            (["--model", args.model] if args.model else []) + ([] if args.window is None else
                                                                 ["--window", str(args.window)])
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            sys.exit(f"aromni asr failed: {r.stderr.strip()}")
        result["cli_long_wer"] = round(100 * word_errors(" ".join(refs), r.stdout.strip()).wer, 1)
    if args.keep:
        with open(os.path.join(out_dir, "transcripts.json"), "w") as f:
            json.dump({"refs": refs, "voices": voices, "clip_hyps": clip_hyps, "long_hyp": long_hyp,
                       "windows_s": [round(len(w) / sr, 2) for w in windows]}, f, indent=1)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['sentences']} sentences, {result['audio_s']} s of audio, {result['windows']} windows "
              f"(longest {result['window_s_max']} s); {result['cpu']}, {result['threads']} thread(s)")
        print(f"  clips: WER {result['clip_wer']:.1f} %  ({result['clips_s']} s)")
        print(f"  long:  WER {result['long_wer']:.1f} %  ({result['long_s']} s)" +
              (f"; through `aromni asr`: {result['cli_long_wer']:.1f} %" if args.cli else ""))


if __name__ == "__main__":
    main()
