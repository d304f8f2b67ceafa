"""TTS of whole sentences of a corpus split, beside the teacher's own audio of them, both through the same judges.

    python scripts/tts_sentences.py --data corpus/train.jsonl [--split train] [--n 60] [--model DIR]
                                    [--judge whisper,self] [--out tts-sentences.json]

Picks N distinct sentences among the split's TTS lines that are not scene captions (no ``attrs``), not pieces
of a sentence (no ``chunk``) and at least --min-words long, in a fixed shuffled order (--seed); writes them as
a manifest (OUT with the suffix .jsonl), evaluates the model's TTS of them (``aromni eval tts``; its report is
OUT with the suffix .eval.json) and transcribes the lines' own audio (the voice the model learned to speak) with
each judge. Prints a Markdown table (judge, model WER, teacher WER) and writes it as JSON to OUT.
On the training split this shows how well the model says what it was taught, apart from unseen words.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

from aromni.core.audio_io import load_audio
from aromni.core.eval.judge import WHISPER_RATE, make_judge
from aromni.core.eval.report import write_report
from aromni.core.eval.runner import EvalConfig, evaluate
from aromni.core.eval.wer import corpus_wer


def pick_sentences(path: str, split: str, n: int, min_words: int = 3, seed: int = 0) -> list[dict]:
    """Up to ``n`` manifest lines of ``split``: TTS of distinct whole sentences (no captions, no pieces) of at
    least ``min_words`` words, with absolute audio paths, in an order fixed by ``seed``."""
    root = os.path.dirname(os.path.abspath(path))
    seen: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            text = d.get("text") or ""
            if (d.get("task") != "tts" or d.get("split") != split or d.get("attrs") or "chunk" in d
                    or len(text.split()) < min_words or text in seen):
                continue
            if d.get("audio"):
                d["audio"] = os.path.join(root, d["audio"])
            seen[text] = d
    lines = list(seen.values())
    random.Random(seed).shuffle(lines)
    return lines[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="corpus manifest (JSONL)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=60, help="sentences")
    ap.add_argument("--min-words", type=int, default=3)
    ap.add_argument("--model", default=None, help="model (default: the bundled default model)")
    ap.add_argument("--judge", default="whisper,self", help="judges, comma-separated: whisper, whisper:DIR, self")
    ap.add_argument("--out", default="tts-sentences.json")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)

    from aromni.core.api import load

    lines = pick_sentences(a.data, a.split, a.n, a.min_words, a.seed)
    if not lines:
        print(f"error: no whole-sentence TTS lines of split {a.split!r} in {a.data}", file=sys.stderr)
        return 2
    stem = os.path.splitext(a.out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    manifest = stem + ".jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in lines)
    omni = load(a.model, device=a.device)
    rep = evaluate(EvalConfig(task="tts", data=manifest, model=a.model, split=a.split, batch_size=a.batch_size,
                              seed=a.seed, device=a.device, judge=a.judge, quiet=True), omni=omni)
    write_report(rep, stem + ".eval.json")
    judged = rep["metrics"].get("judges") or {rep["settings"]["judge"]: rep["metrics"]}
    voiced = [d for d in lines if d.get("audio")]
    teacher = [load_audio(d["audio"], WHISPER_RATE) for d in voiced]
    refs = [d["text"] for d in voiced]
    res: dict = {"data": os.path.abspath(a.data), "split": a.split, "n": len(lines), "teacher_n": len(voiced),
                 "model": {}, "teacher": {}}
    for spec in a.judge.split(","):  # the judges of the evaluation, again for the teacher's audio
        j = make_judge(spec.strip(), omni=omni, device=str(omni.device), seed=a.seed)
        res["model"][j.name] = judged[j.name]["wer"]
        res["teacher"][j.name] = corpus_wer(refs, j.transcribe(teacher, WHISPER_RATE)).wer if voiced else None
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}%"

    print(f"| judge | model TTS WER ({len(lines)} sentences) | teacher WER ({len(voiced)}) |\n|---|---|---|")
    for name in res["model"]:
        print(f"| {name} | {pct(res['model'][name])} | {pct(res['teacher'][name])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
