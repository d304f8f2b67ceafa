"""Measure a model on real human speech (Debian's Asterisk prompts and LibriVox clips; evaluation only).

    python scripts/real_speech_eval.py [--model DIR] [--out real/] [--groups "asterisk words,librivox"]
                                       [--limit N] [--no-asr] [--no-ceiling] [--codec DIR]
                                       [--voices ENGINE:NAME,...] [--voice-clips N]

Writes OUT/real_speech.jsonl (an `aromni eval --task asr --split real` manifest), OUT/asr.json (the ASR report,
WER per group) and OUT/ceiling.json (Whisper tiny.en WER on the original clips and on the model's codec
reconstructions, per group), and prints a Markdown table. ``--codec DIR`` measures the ceiling of the speech
tokenizer in DIR (a tokenizer directory, e.g. a build's ``codec/``) instead of the model's (no model is loaded
with ``--no-asr``). ``--voices`` adds synthetic groups to both: N held-out corpus sentences said by each voice.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from aromni.core.eval import real_speech


def synthetic_clips(out: str, voices: list[str], n: int) -> list:
    """``n`` held-out corpus sentences (the first of the held-out split) said by each voice, as WAV clips."""
    from aromni.core.audio_io import write_wav
    from aromni.core.corpus import sentences, voices as V

    _, held = sentences.split_sentences(0)
    os.makedirs(out, exist_ok=True)
    items = []
    for v in voices:
        for i, text in enumerate(held[:n]):
            path = os.path.abspath(os.path.join(out, f"{v.replace(':', '_')}_{i:03d}.wav"))
            if not os.path.exists(path):
                write_wav(path, V.synthesize(v, sentences.written(text), 16000), 16000)
            items.append(real_speech.Clip(path, text, f"voice {v}"))
    return items


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--out", default="real")
    ap.add_argument("--groups", default=",".join(real_speech.GROUPS))
    ap.add_argument("--limit", type=int, default=None, help="at most N clips per group")
    ap.add_argument("--no-asr", action="store_true")
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--codec", default=None, help="tokenizer directory whose speech codec the ceiling measures")
    ap.add_argument("--unquantised", action="store_true",
                    help="also measure the codec's decoder on its encoder's latents, without the codebook")
    ap.add_argument("--voices", default="", help="synthetic voices (engine:name, comma-separated) added as groups")
    ap.add_argument("--voice-clips", type=int, default=40, help="held-out sentences per synthetic voice")
    a = ap.parse_args()
    why = real_speech.available()
    if why:
        print(f"real_speech_eval: {why}", file=sys.stderr)
        return 2
    groups = tuple(g.strip() for g in a.groups.split(",") if g.strip())
    os.makedirs(a.out, exist_ok=True)
    items = real_speech.clips(groups)
    if a.limit is not None:
        items = [c for g in groups for c in [c for c in items if c.group == g][: a.limit]]
    if a.voices:
        items += synthetic_clips(os.path.join(a.out, "voices"), a.voices.split(","), a.voice_clips)
    manifest = os.path.join(a.out, "real_speech.jsonl")
    real_speech.write_manifest(manifest, items)
    omni = None
    if not a.no_asr or a.codec is None:
        from aromni.core.api import load

        omni = load(a.model)
    rows = []
    if not a.no_asr:
        from aromni.core.eval.report import write_report
        from aromni.core.eval.runner import EvalConfig, evaluate

        rep = evaluate(EvalConfig(task="asr", data=manifest, model=a.model, split="real", quiet=True), omni=omni)
        write_report(rep, os.path.join(a.out, "asr.json"))
        by = rep["metrics"].get("by_group") or {items[0].group: rep["metrics"]}
        for g, m in by.items():
            rows.append(f"| ASR, {g} | WER | {100 * m['wer']:.1f}% ({m.get('n', '?')} clips) |")
    if not a.no_ceiling:
        from aromni.core.eval.judge import make_judge

        if a.codec:
            from aromni.core.train.resolve import load_tokenizers

            codec = load_tokenizers({"speech": a.codec})["speech"]
        else:
            codec = omni.speech
        ceil = real_speech.codec_ceiling(codec, make_judge("whisper"), items, unquantised=a.unquantised)
        with open(os.path.join(a.out, "ceiling.json"), "w", encoding="utf-8") as f:
            json.dump(ceil, f, indent=2)
        for g, m in ceil.items():
            rows.append(f"| codec, {g} | Whisper WER original / reconstructed | {100 * m['wer_original']:.1f}% / "
                        f"{100 * m['wer_reconstructed']:.1f}% (+{m['points_lost']:.1f} points, {m['n']} clips)"
                        + (f"; not quantised {100 * m['wer_unquantised']:.1f}%" if "wer_unquantised" in m else "")
                        + " |")
    print("| measure | metric | value |\n|---|---|---|\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
