"""Evaluation reports: one JSON object per run (what was evaluated, how, and the numbers), a readable
table, and the differences between two reports.

Schema (``"schema": "aromni-eval/1"``): ``task``, ``aromni_version``, ``created`` (UTC ISO time), ``model``
({``path``, ``vocab``}), ``data`` ({``path``, ``format``, ``split``, ``n``, ``sha256``}), ``seed``,
``decoding`` (task options), ``device``, ``dtype``, ``batch_size``, ``settings`` (judge / normaliser /
CLIP model), ``metrics`` (flat name -> number), ``timings`` (seconds) and ``items`` (per-example rows).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import TypeGuard

from ..errors import InputError

SCHEMA = "aromni-eval/1"
# keys whose difference between two reports is shown by --compare (besides metrics)
SETTING_KEYS = ("task", "aromni_version", "model", "data", "seed", "decoding", "device", "dtype", "batch_size",
                "settings")


@dataclass
class Report:
    task: str
    metrics: dict
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    seed: int | None = None
    decoding: dict = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    items: list = field(default_factory=list)

    def to_dict(self) -> dict:
        from aromni import __version__

        return {"schema": SCHEMA, "task": self.task, "aromni_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "model": self.model, "data": self.data, "seed": self.seed, "decoding": self.decoding,
                "device": self.device, "dtype": self.dtype, "batch_size": self.batch_size,
                "settings": self.settings, "metrics": self.metrics, "timings": self.timings, "items": self.items}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_report(report: dict, path: str) -> None:
    from ..outputs import atomic_file

    with atomic_file(path) as f:
        f.write((json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_report(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"not a JSON evaluation report ({e})", path) from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise InputError(f"not an aromni evaluation report (expected \"schema\": \"{SCHEMA}\")", path)
    return d


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "-" if v is None else str(v)


def format_table(report: dict) -> str:
    """A short human-readable summary: settings, then metrics and timings."""
    rows = [("task", report["task"]), ("model", report["model"].get("path")),
            ("data", f"{report['data'].get('path')} ({report['data'].get('n')} items)"),
            ("device", f"{report['device']} {report['dtype']}, batch {report['batch_size']}, seed {report['seed']}")]
    rows += [(k, _fmt(v)) for k, v in report.get("settings", {}).items()]
    rows += [(k, _fmt(v)) for k, v in _flatten(report["metrics"]).items()]
    rows += [(f"{k}", _fmt(v)) for k, v in report.get("timings", {}).items()]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _is_number(v: object) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare(a: dict, b: dict) -> list[tuple[str, object, object, float | None]]:
    """Rows ``(name, a, b, b - a)``: every metric and timing, then each setting that differs."""
    rows = []
    for section in ("metrics", "timings"):
        fa, fb = _flatten(a.get(section, {})), _flatten(b.get(section, {}))
        for k in list(fa) + [k for k in fb if k not in fa]:
            va, vb = fa.get(k), fb.get(k)
            delta = vb - va if _is_number(va) and _is_number(vb) else None
            rows.append((k if section == "metrics" else f"{section}.{k}", va, vb, delta))
    for key in SETTING_KEYS:
        fa, fb = _flatten(a.get(key), key), _flatten(b.get(key), key)
        for k in list(fa) + [k for k in fb if k not in fa]:
            if fa.get(k) != fb.get(k):
                rows.append((k, fa.get(k), fb.get(k), None))
    return rows


def format_compare(rows: list, name_a: str = "A", name_b: str = "B") -> str:
    table = [("", name_a, name_b, "B - A")] + [(k, _fmt(va), _fmt(vb), "" if d is None else f"{d:+.4f}")
                                               for k, va, vb, d in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def report_name(path: str) -> str:
    return os.path.basename(path) or path


# headline numbers per task, for READMEs: (metric key, label, format)
HEADLINE = {
    "asr": [("wer", "WER", "pct")],
    "tts": [("wer", "WER", "pct"), ("first_audio_s_median", "first audio", "ms"), ("rtf_median", "RTF", "f2")],
    "caption": [("cider_d", "CIDEr-D", "f3"), ("attr_accuracy", "attribute acc.", "pct")],
    "t2i": [("attr_accuracy", "attribute acc.", "pct"), ("scp_accuracy", "shape+colour+position", "pct"),
            ("clipscore", "CLIPScore", "f3")],
    "s2i": [("attr_accuracy", "attribute acc.", "pct"), ("scp_accuracy", "shape+colour+position", "pct"),
            ("transcript_wer", "transcript WER", "pct")],
}


def _headline_value(v, kind: str) -> str:
    if v is None:
        return "-"
    return {"pct": f"{100 * v:.1f}%", "ms": f"{1000 * v:.0f} ms", "f2": f"{v:.2f}", "f3": f"{v:.3f}"}[kind]


def markdown_summary(reports: list[dict], labels: list[str] | None = None) -> str:
    """A Markdown table of each report's headline metrics (one row per report, named by ``labels`` or its
    task)."""
    lines = ["| task | items | metrics | judge / device |", "|---|---|---|---|"]
    for i, r in enumerate(reports):
        m = r["metrics"]
        cells = [f"{label} {_headline_value(m.get(k), kind)}" for k, label, kind in HEADLINE.get(r["task"], [])
                 if k in m]
        head = next(((k, kind) for k, _, kind in HEADLINE.get(r["task"], []) if k in m), None)
        if head and m.get("judges"):  # e.g. TTS WER by Whisper and by the model's own ASR
            cells[0] = "WER " + ", ".join(f"{_headline_value(jm.get('wer'), 'pct')} ({j})"
                                          for j, jm in m["judges"].items())
        if head and m.get("by_group"):  # e.g. ASR WER in the training voices and in a held-out voice
            cells.append("; ".join(f"{g}: {_headline_value(gm.get(head[0]), head[1])} ({gm.get('n')})"
                                   for g, gm in m["by_group"].items() if head[0] in gm))
        where = r.get("settings", {}).get("judge") or ""
        where = f"{where} judge, " if where else ""
        name = labels[i] if labels else r["task"]
        lines.append(f"| {name} | {m.get('n', r['data'].get('n'))} | {', '.join(cells) or '-'} | "
                     f"{where}{r['device']} {r['dtype']} |")
    return "\n".join(lines)
