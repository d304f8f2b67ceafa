#!/usr/bin/env python3
"""Generate man/aromni.1 and man/aromni-<command>.1 from the typer app.

Run after changing any command's options:  .venv/bin/python scripts/gen_man.py
tests/test_man.py fails when a page lacks an option the CLI has.
"""
from __future__ import annotations

import datetime
import os
import sys

import typer.main

HERE = os.path.dirname(os.path.abspath(__file__))
MAN = os.path.join(HERE, "..", "man")

EXTRA = {
    "aromni": """.SH EXIT STATUS
.TP
.B 0
success
.TP
.B 1
a failure that is not the user's (a bug, an unavailable engine, an out-of-memory error)
.TP
.B 2
a usage error or bad input (one line on stderr names the problem and the file)
.TP
.B 130
interrupted (Ctrl-C)
.TP
.B 143
terminated (SIGTERM); a file being written is removed, never left partial
.TP
.B 141
stdout was closed early (for example by \\fBhead\\fR); nothing is printed
.SH CONVENTIONS
Data goes to stdout only; logs, warnings and progress bars go to stderr.
\\fB-\\fR means stdin or stdout. A missing text or prompt argument is read from stdin.
Binary output (WAV, PNG, NPY) is never written to a terminal: redirect stdout or use \\fB-o FILE\\fR.
Token streams are NPY (int32), JSON lists or the line format (one sequence per line, space-separated ids).
.SH ENVIRONMENT
.TP
.B AROMNI_MODEL
model used when \\fB--model\\fR is not given (default: the bundled model)
.TP
.B AROMNI_DEBUG
show tracebacks (same as \\fB--debug\\fR)
.TP
.B AROMNI_WAVTOKENIZER
directory holding WavTokenizer's .ckpt and .yaml for external AR-Omni checkpoints
""",
}


def esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("-", "\\-").replace("\n.", "\n\\&.")


def option_lines(cmd) -> list[str]:
    out = []
    for p in cmd.params:
        if p.param_type_name == "argument":
            continue
        names = ", ".join(p.opts + list(p.secondary_opts))
        meta = "" if getattr(p, "is_flag", False) else " " + _metavar(p, cmd)
        out.append(f".TP\n.B {esc(names)}{esc(meta)}\n{esc(getattr(p, 'help', '') or '')}")
    out.append(".TP\n.B \\-h, \\-\\-help\nShow the help and exit.")
    return out


def _metavar(p, cmd) -> str:
    """The value's placeholder as ``--help`` shows it (``<int>``); typer >= 0.17 makes display_type a method."""
    if p.metavar:
        return p.metavar
    dt = getattr(p, "display_type", None)
    if callable(dt):
        dt = dt(cmd.context_class(cmd))
    return str(dt or "VALUE")


def arg_names(cmd) -> list[str]:
    return [(p.name or "arg").upper() + ("..." if getattr(p, "nargs", 1) == -1 else "")
            for p in cmd.params if p.param_type_name == "argument"]


def page(name: str, cmd, date: str) -> str:
    title = name.upper()
    summary = (cmd.short_help or cmd.help or "").strip().splitlines()[0] if (cmd.short_help or cmd.help) else ""
    lines = [f'.TH {title} 1 "{date}" "aromni" "aromni manual"', ".SH NAME", f"{esc(name)} \\- {esc(summary)}",
             ".SH SYNOPSIS", f".B {esc(name.replace('-', ' ', 1))}", "[\\fIOPTIONS\\fR] " + " ".join(
                 f"\\fI{esc(a)}\\fR" for a in arg_names(cmd))]
    if cmd.help:
        lines += [".SH DESCRIPTION", esc(cmd.help.strip())]
    lines += [".SH OPTIONS"] + option_lines(cmd)
    lines += [".SH SEE ALSO", ".BR aromni (1)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.path.insert(0, os.path.join(HERE, ".."))
    from aromni.app import app

    group = typer.main.get_command(app)
    date = datetime.date.today().isoformat()
    os.makedirs(MAN, exist_ok=True)
    ctx = group.context_class(group)
    top = [f'.TH AROMNI 1 "{date}" "aromni" "aromni manual"', ".SH NAME",
           "aromni \\- run, stream, train and evaluate AR\\-Omni (text, image and speech in one token stream)",
           ".SH SYNOPSIS", ".B aromni", "[\\fB\\-\\-debug\\fR] [\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
           ".SH DESCRIPTION", esc(group.help or ""), ".SH OPTIONS"] + option_lines(group) + [".SH COMMANDS"]
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        top.append(f".TP\n.BR aromni\\-{esc(name)} (1)\n{esc(cmd.short_help or '')}")
        with open(os.path.join(MAN, f"aromni-{name}.1"), "w") as f:
            f.write(page(f"aromni-{name}", cmd, date))
    with open(os.path.join(MAN, "aromni.1"), "w") as f:
        f.write("\n".join(top) + "\n" + EXTRA["aromni"])
    print(f"wrote {len(group.list_commands(ctx)) + 1} pages to {os.path.normpath(MAN)}", file=sys.stderr)


if __name__ == "__main__":
    main()
