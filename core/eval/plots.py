"""PNG plots with matplotlib's Agg canvas (no pyplot, no display): training curves from metrics JSONL
files, and latency / RTF against output length from a TTS evaluation report."""
from __future__ import annotations

import io
import json
import math
import os

from ..checks import check_number
from ..errors import AromniError, InputError, NotAvailableError, OptionError

X_KEYS = ("step", "global_step", "iter", "iteration", "epoch")
SMOOTH_MIN_POINTS = 30  # sparser series (e.g. periodic validation loss) are drawn raw: an EMA would lag
PLOT_HINT = "plotting needs matplotlib: pip install 'aromni[plot]'"


def _figure(ncols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NotAvailableError(PLOT_HINT) from None
    fig = Figure(figsize=(6.4 * ncols, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def read_metrics(path: str) -> list[dict]:
    """A metrics JSONL file: one JSON object per line (blank lines skipped)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"line {i}: not JSON ({e.msg})", path) from None
                if not isinstance(row, dict):
                    raise InputError(f"line {i}: expected a JSON object", path)
                rows.append(row)
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read ({e})", path) from None
    if not rows:
        raise InputError("no metrics in file", path)
    return rows


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ema(ys: list[float], alpha: float) -> list[float]:
    out, acc = [], None
    for y in ys:
        acc = y if acc is None else alpha * acc + (1 - alpha) * y
        out.append(acc)
    return out


def plot_metrics(paths: list[str], keys: list[str] | None = None, x: str | None = None, log_y: bool = False,
                 smooth: float = 0.0, title: str | None = None) -> tuple[bytes, list[str]]:
    """Curves of ``keys`` (default: every numeric key with "loss" in its name) against ``x`` (default: the
    first of step/global_step/iter/iteration/epoch present, else the line number) for one or more runs.
    ``smooth`` in [0, 1) draws an exponential moving average over the faint raw curve (series of at least
    30 points). Returns the PNG bytes
    and the names of the plotted series."""
    check_number("smooth", smooth)
    fig, (ax,) = _figure()
    plotted, xlabels = [], set()
    for path in paths:
        rows = read_metrics(path)
        xk = x or next((k for k in X_KEYS if any(k in r for r in rows)), None)
        if x and not any(x in r for r in rows):
            raise InputError(f"no {x!r} field in any line", path)
        xlabels.add(xk or "line")
        names = keys or sorted({k for r in rows for k, v in r.items() if "loss" in k.lower() and _number(v)})
        if not names:
            found = sorted({k for r in rows for k, v in r.items() if _number(v)})
            raise OptionError("y", f"{path}: no numeric *loss* fields; choose with {{opt}} from {found}")
        for k in names:
            pts = [(r[xk] if xk else i, r[k]) for i, r in enumerate(rows) if k in r and _number(r[k])
                   and (xk is None or _number(r.get(xk)))]
            if not pts:
                raise InputError(f"no numeric values for {k!r}", path)
            xs, ys = zip(*pts)
            label = k if len(paths) == 1 else f"{path}: {k}"
            if smooth > 0 and len(xs) >= SMOOTH_MIN_POINTS:
                line, = ax.plot(xs, ys, alpha=0.25, linewidth=1)
                ax.plot(xs, _ema(list(ys), smooth), color=line.get_color(), linewidth=1.8, label=label)
            else:
                ax.plot(xs, ys, linewidth=1.5, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
            plotted.append(label)
    ax.set_xlabel(" / ".join(sorted(xlabels)))
    series = {p.split(": ")[-1] for p in plotted}
    ax.set_ylabel(series.pop() if len(series) == 1 else "loss" if all("loss" in n for n in series) else "value")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title(title or ", ".join(os.path.basename(p) for p in paths), fontsize=10)
    return _png(fig), plotted


def plot_report(report: dict, title: str | None = None) -> bytes:
    """TTS report: first-audio latency and RTF per item against the length of the synthesised audio.
    ASR report: per-item WER against input length."""
    items = report.get("items") or []
    task = report.get("task")
    if task == "tts":
        pts = [it for it in items if all(_number(it.get(k)) for k in ("audio_s", "rtf", "first_audio_s"))]
        if not pts:
            raise AromniError("the TTS report has no per-item audio_s/rtf/first_audio_s to plot")
        fig, (a1, a2) = _figure(2)
        xs = [it["audio_s"] for it in pts]
        a1.scatter(xs, [it["first_audio_s"] * 1000 for it in pts], s=14)
        a1.set_xlabel("output audio (s)")
        a1.set_ylabel("first audio (ms)")
        a1.set_title("first-audio latency", fontsize=10)
        a2.scatter(xs, [it["rtf"] for it in pts], s=14, color="tab:orange")
        a2.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="real time (RTF 1)")
        a2.set_xlabel("output audio (s)")
        a2.set_ylabel("real-time factor (lower is faster)")
        a2.set_title("RTF", fontsize=10)
        a2.legend(frameon=False)
        for a in (a1, a2):
            a.grid(True, alpha=0.3)
            a.set_xlim(left=0)
            a.set_ylim(bottom=0)
    elif task == "asr":
        pts = [it for it in items if _number(it.get("audio_s")) and _number(it.get("wer"))]
        if not pts:
            raise AromniError("the ASR report has no per-item audio_s/wer to plot")
        fig, (a1,) = _figure()
        a1.scatter([it["audio_s"] for it in pts], [it["wer"] for it in pts], s=14)
        a1.set_xlabel("input audio (s)")
        a1.set_ylabel("WER")
        a1.grid(True, alpha=0.3)
    else:
        raise AromniError(f"nothing to plot for a {task!r} report (tts: latency and RTF; asr: WER by length)")
    model = os.path.basename(str(report.get("model", {}).get("path", "")).rstrip("/")) or "model"
    fig.suptitle(title or f"aromni eval {task}: {model}", fontsize=11)
    return _png(fig)
