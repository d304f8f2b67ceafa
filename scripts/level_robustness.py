"""ASR of a corpus's held-out clips played back louder or quieter: with the speech codec's input level
(``input_dbfs``, core/levels.py ``match_level``) and with the clips encoded as they are.

    python scripts/level_robustness.py --data corpus/heldout.jsonl [--model DIR] [--gains 0,-10,-20,-30,6]
                                       [--split heldout] [--batch-size 32] [--out level.json]

Each gain (dB) scales every held-out ASR clip (clipped to [-1, 1], written as float WAV to a temporary folder)
and runs `aromni eval asr` on them twice: as the model is (its codec brings clips to its level when it names one)
and with the codec's level switched off. Prints a Markdown table of the WER (all, per group); ``--out`` writes the
numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import soundfile as sf

from aromni.core.api import load
from aromni.core.eval.runner import EvalConfig, evaluate


def asr_rows(data: str, split: str) -> list[dict]:
    """The ASR lines of ``split`` ("all": every split) in the manifest ``data``."""
    with open(data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r.get("task") == "asr" and (split == "all" or r.get("split") == split)]


def shifted_manifest(data: str, rows: list[dict], gain_db: float, out: str) -> str:
    """A manifest of ``rows`` (lines of the manifest ``data``) whose clips are scaled by ``gain_db``, clipped to
    [-1, 1] and written under ``out``."""
    root = os.path.dirname(os.path.abspath(data))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "manifest.jsonl")
    with open(path, "w", encoding="utf-8") as w:
        for row in rows:
            x, sr = sf.read(os.path.join(root, row["audio"]), dtype="float32", always_2d=True)
            y = np.clip(x.mean(axis=1) * 10 ** (gain_db / 20), -1, 1)
            clip = os.path.join(out, f"{row['id']}.wav")
            sf.write(clip, y, sr, subtype="FLOAT")
            w.write(json.dumps({**row, "audio": clip}) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a corpus manifest (e.g. corpus/heldout.jsonl)")
    ap.add_argument("--model", help="model directory (default: the bundled model)")
    ap.add_argument("--gains", default="0,-10,-20,-30,6", help="gains in dB, comma-separated")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", help="write the numbers as JSON here")
    a = ap.parse_args()
    try:
        gains = [float(g) for g in a.gains.split(",") if g.strip()]
    except ValueError:
        print(f"level_robustness: --gains: not a list of numbers: {a.gains!r}", file=sys.stderr)
        return 2
    if not os.path.isfile(a.data):
        print(f"level_robustness: --data: no such file: {a.data}", file=sys.stderr)
        return 2
    rows = asr_rows(a.data, a.split)
    if not rows:
        print(f"level_robustness: {a.data} holds no {a.split} ASR lines", file=sys.stderr)
        return 2
    omni = load(a.model)
    if omni.speech is None:
        print("level_robustness: the model has no speech tokenizer", file=sys.stderr)
        return 2
    level = getattr(omni.speech, "input_dbfs", None)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for g in gains:
            data = shifted_manifest(a.data, rows, g, os.path.join(tmp, f"{g:g}"))
            for mode, dbfs in (("leveled", level), ("as given", None)):
                if mode == "leveled" and level is None:
                    continue
                omni.speech.input_dbfs = dbfs
                rep = evaluate(EvalConfig(task="asr", data=data, split="all", batch_size=a.batch_size, quiet=True,
                                          model=a.model), omni=omni)
                m = rep["metrics"]
                results.append({"gain_db": g, "input": mode, "n": m["n"], "wer": m["wer"],
                                **{f"wer {k}": v["wer"] for k, v in sorted((m.get("by_group") or {}).items())}})
            omni.speech.input_dbfs = level
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump({"input_dbfs": level, "results": results}, f, indent=1)
    cols = [k for k in results[0] if k.startswith("wer")]
    print(f"codec input level: {'none' if level is None else f'{level:g} dBFS'}")
    print("| gain | input | " + " | ".join(c.replace("wer", "WER").strip() for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in results:
        print(f"| {r['gain_db']:+g} dB | {r['input']} | " + " | ".join(f"{100 * r[c]:.1f}%" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
