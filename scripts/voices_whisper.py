"""Whisper tiny.en WER of every engine's voices in core/corpus/voices.py on fixed everyday sentences.

    python scripts/voices_whisper.py [--voices espeak-ng:en-us,flite:slt,...] [--out voices.json]

A check that each voice speaks intelligible English before it goes into a corpus (the table in
docs/default-model.md, "Voice sources"). Prints a Markdown table: voice, WER, seconds of audio, synthesis
real-time factor on this machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from aromni.core.corpus import voices as V

SENTENCES = (
    "open the door and the window", "what time is it now", "please call me back tomorrow morning",
    "i would like a cup of coffee", "turn off the lights in the kitchen", "where is the nearest train station",
    "the meeting starts at half past nine", "it is going to rain this afternoon", "set an alarm for seven thirty",
    "the children are playing in the garden",
)
DEFAULT = ("espeak-ng:en-us", "espeak-ng:en-us+m3", "espeak-ng:en-gb-scotland+f2", "flite:kal", "flite:awb",
           "flite:rms", "flite:slt", "hibari:heart", "kokoro:jf_alpha", "kokoro:jm_kumo", "piper:en_US-joe-medium")
SR = 16000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", default=",".join(DEFAULT))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from aromni.core.eval.judge import make_judge
    from aromni.core.eval.wer import corpus_wer

    judge = make_judge("whisper")
    rows = ["| voice | Whisper tiny.en WER | audio s | synthesis RTF |", "|---|---|---|---|"]
    out = {}
    for vid in a.voices.split(","):
        v = V.Voice.parse(vid)
        if V.missing(v.engine):
            print(f"skipped {vid}: {V.missing(v.engine)}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        wavs = [V.synthesize(v, s, SR, seed=0) for s in SENTENCES]
        synth_s = time.perf_counter() - t0
        hyps = judge.transcribe(wavs, SR)
        audio_s = sum(len(w) for w in wavs) / SR
        wer = corpus_wer(list(SENTENCES), hyps).wer
        out[vid] = {"wer": wer, "audio_s": audio_s, "rtf": synth_s / audio_s, "hyps": hyps}
        rows.append(f"| {vid} | {100 * wer:.1f}% | {audio_s:.1f} | {synth_s / audio_s:.2f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
