"""Evaluate a model on every task of a corpus manifest's held-out split; print the results table.

    python scripts/eval_default.py --data corpus/manifest.jsonl [--model DIR] [--out eval/] [--judge whisper]
                                   [--resume]

Writes OUT/<task>.json (the `aromni eval` reports) and prints a Markdown table of the headline numbers. Besides
the tasks of `aromni eval`, ``t2i-1`` is T2I with one candidate (the argmax drawing; OUT/t2i-1.json) and
``t2i-16`` T2I with the best of 16 (OUT/t2i-16.json), beside the model's own default; a variant that asks for
what the model's default already did is a copy of that report, not run again.
The model is loaded once. Tasks with no held-out items in the manifest are skipped (said on stderr).
With --resume a task whose report is already in OUT is kept, not run again, when that report is of the same
model (path; the report newer than every file of it), data (sha256, split, items), seed, batch size and TTS
judges: an interrupted evaluation (the build script's last stage, ~20 min) goes on where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys

from aromni.core.errors import InputError
from aromni.core.eval.data import load_dataset
from aromni.core.eval.report import markdown_summary, read_report, write_report
from aromni.core.eval.runner import EVALUATORS, EvalConfig, evaluate


# report name -> (task, decoding overrides): runs of a task with other decoding options than the model's defaults
VARIANTS = {"t2i-1": ("t2i", {"candidates": 1}), "t2i-16": ("t2i", {"candidates": 16})}


def _newest_mtime(path: str) -> float:
    if os.path.isfile(path):
        return os.path.getmtime(path)
    return max((os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs), default=0.0)


def _judge_names(spec: str) -> str:
    return ",".join("self" if j == "model" else j.split(":")[0] for j in spec.split(","))


def decoded_with(rep: dict, overrides: dict) -> bool:
    """Whether the report ``rep`` was decoded with every option of ``overrides``."""
    return all(rep.get("decoding", {}).get(k) == v for k, v in overrides.items())


def finished_report(path: str, a: argparse.Namespace, task: str, model_dir: str,
                    overrides: dict | None = None) -> dict | None:
    """The report at ``path`` if it is of this run's model (unchanged since), data and settings (and decoding
    ``overrides``), else None."""
    overrides = overrides or {}
    if not os.path.isfile(path) or os.path.getmtime(path) < _newest_mtime(model_dir):
        return None
    try:
        rep = read_report(path)
        want = load_dataset(a.data, task, a.split, a.limit).info
    except InputError:
        return None
    data = rep.get("data", {})
    same = (os.path.realpath(rep.get("model", {}).get("path", "")) == os.path.realpath(model_dir)
            and all(data.get(k) == want[k] for k in ("sha256", "split", "n"))
            and rep.get("seed") == a.seed and rep.get("batch_size") == a.batch_size
            and (task != "tts" or rep.get("settings", {}).get("judge") == _judge_names(a.judge))
            and not (task == "t2i" and a.clip_checkpoint)  # CLIPScore settings are not compared: run it again
            and decoded_with(rep, overrides))
    return rep if same else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="corpus manifest (JSONL)")
    ap.add_argument("--model", default=None, help="model (default: the bundled default model)")
    ap.add_argument("--out", default="eval", help="directory for the JSON reports")
    ap.add_argument("--tasks", default=",".join([*EVALUATORS, *VARIANTS]),
                    help=f"comma-separated tasks ({', '.join([*EVALUATORS, *VARIANTS])})")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--judge", default="whisper",
                    help="tts judge(s): whisper, whisper:DIR, self, or several: whisper,self")
    ap.add_argument("--clip-checkpoint", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep the reports already in OUT of this data, "
                    "settings and model (newer than its files); run the other tasks")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)

    from aromni.core.api import DEFAULT_DIR, load

    os.makedirs(a.out, exist_ok=True)
    reports, todo = [], []
    for name in a.tasks.split(","):
        task, overrides = VARIANTS.get(name, (name, {}))
        path = os.path.join(a.out, f"{name}.json")
        rep = finished_report(path, a, task, a.model or DEFAULT_DIR, overrides) if a.resume else None
        if rep is None:
            todo.append((name, task, overrides))
        else:
            print(f"{name}: kept {path} (--resume)", file=sys.stderr)
            reports.append((name, rep))
    omni = load(a.model, device=a.device, dtype=a.dtype) if todo else None
    done = dict(reports)
    for name, task, overrides in todo:
        base = done.get(task)
        if overrides and base and decoded_with(base, overrides):
            write_report(base, os.path.join(a.out, f"{name}.json"))  # the model's default is this variant
            reports.append((name, base))
            continue
        cfg = EvalConfig(task=task, data=a.data, model=a.model, split=a.split, limit=a.limit,
                         batch_size=a.batch_size, seed=a.seed, device=a.device, dtype=a.dtype, judge=a.judge,
                         clip_checkpoint=a.clip_checkpoint, quiet=a.quiet, decode=dict(overrides))
        try:
            rep = evaluate(cfg, omni=omni)
        except InputError as e:
            if f"no {task} items" not in str(e):
                raise
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        write_report(rep, os.path.join(a.out, f"{name}.json"))
        reports.append((name, rep))
        done[name] = rep
    order = a.tasks.split(",")
    reports.sort(key=lambda nr: order.index(nr[0]))
    print(markdown_summary([r for _, r in reports], [n for n, _ in reports]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
