"""`aromni plot`."""
from __future__ import annotations

import json
from typing import List, Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import IMAGE_SUFFIXES, Output, Quiet, Threads, binary_output, check_suffix, log
from aromni.core.checks import check_number


def run(
    files: Annotated[List[str], typer.Argument(
        help="Training metrics JSONL file(s) (one JSON object per line, overlaid), or one `aromni eval` report.")],
    output: Output = "-",
    y: Annotated[Optional[List[str]], typer.Option(
        "--y", help="Field to plot (repeatable). Default: every numeric field with 'loss' in its name.")] = None,
    x: Annotated[Optional[str], typer.Option(
        "--x", help="Field for the x axis. Default: step, global_step, iter, iteration or epoch, else line number.")
    ] = None,
    smooth: Annotated[float, typer.Option(
        "--smooth", help="Exponential moving average weight in [0, 1), drawn over the faint raw curve.")] = 0.0,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic y axis.")] = False,
    title: Annotated[Optional[str], typer.Option("--title", help="Figure title.")] = None,
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Plot training curves or an evaluation report to PNG.

    Metrics JSONL: loss curves against step (several files overlay several runs).
    A TTS eval report: first-audio latency and RTF against output length; an ASR report: WER by input length.

    \b
    Examples:
      aromni plot runs/a/metrics.jsonl -o loss.png --smooth 0.9
      aromni eval tts --data heldout.jsonl --json > tts.json && aromni plot tts.json -o rtf.png
    """
    from aromni.core.eval import plots

    check_suffix(output, IMAGE_SUFFIXES, "a plot")
    check_number("smooth", smooth)
    from aromni.core.eval.report import SCHEMA, read_report

    report = None
    if len(files) == 1 and files[0].endswith(".json"):
        try:
            with open(files[0], encoding="utf-8") as f:
                head = json.load(f)
            report = read_report(files[0]) if isinstance(head, dict) and head.get("schema") == SCHEMA else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            report = None  # fall through: read as metrics JSONL, which reports its own errors
    if report is not None:
        png = plots.plot_report(report, title=title)
        what = f"{report['task']} report"
    else:
        png, series = plots.plot_metrics(files, keys=y, x=x, log_y=log_y, smooth=smooth, title=title)
        what = ", ".join(series)
    with binary_output(output, "a PNG image") as f:
        f.write(png)
    log(f"plotted {what} -> {'stdout' if output == '-' else output}", quiet)
