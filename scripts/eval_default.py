"""Evaluate a model on every task of a corpus manifest's held-out split; print the README table.

    python scripts/eval_default.py --data corpus/manifest.jsonl [--model DIR] [--out eval/] [--judge whisper]

Writes OUT/<task>.json (the `aromni eval` reports) and prints a Markdown table of the headline numbers.
The model is loaded once. Tasks with no held-out items in the manifest are skipped (said on stderr).
"""
from __future__ import annotations

import argparse
import os
import sys

from aromni.core.errors import InputError
from aromni.core.eval.report import markdown_summary, write_report
from aromni.core.eval.runner import EVALUATORS, EvalConfig, evaluate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="corpus manifest (JSONL)")
    ap.add_argument("--model", default=None, help="model (default: the bundled default model)")
    ap.add_argument("--out", default="eval", help="directory for the JSON reports")
    ap.add_argument("--tasks", default=",".join(EVALUATORS), help="comma-separated tasks")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--judge", default="whisper", help="tts judge(s): whisper, whisper:DIR, self, or several: whisper,self")
    ap.add_argument("--clip-checkpoint", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)

    from aromni.core.api import load

    omni = load(a.model, device=a.device, dtype=a.dtype)
    os.makedirs(a.out, exist_ok=True)
    reports = []
    for task in a.tasks.split(","):
        cfg = EvalConfig(task=task, data=a.data, model=a.model, split=a.split, limit=a.limit,
                         batch_size=a.batch_size, seed=a.seed, device=a.device, dtype=a.dtype, judge=a.judge,
                         clip_checkpoint=a.clip_checkpoint, quiet=a.quiet)
        try:
            rep = evaluate(cfg, omni=omni)
        except InputError as e:
            if f"no {task} items" not in str(e):
                raise
            print(f"skipping {task}: {e}", file=sys.stderr)
            continue
        write_report(rep, os.path.join(a.out, f"{task}.json"))
        reports.append(rep)
    print(markdown_summary(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
