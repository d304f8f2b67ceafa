"""`aromni tokenize-text`."""
from __future__ import annotations

import sys
from typing import Iterator, List, Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Model, Output, Quiet, Threads, log
from aromni.core.errors import AromniError, InputError


def _texts(texts: Optional[List[str]]) -> Iterator[tuple[str, str]]:
    """(text, where) per argument, or per non-blank stdin line as lines arrive."""
    if texts and texts != ["-"]:
        if "-" in texts:
            raise AromniError("- (stdin) cannot be mixed with text arguments")
        for k, t in enumerate(texts, 1):
            yield t, f"argument {k}"
        return
    if sys.stdin is None or sys.stdin.isatty():
        raise AromniError("no text given: pass it as arguments or pipe lines on stdin")
    seen = False
    for n, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"line {n}: not UTF-8 text", "<stdin>") from None
        if line.strip():
            seen = True
            yield line.strip(), f"<stdin> line {n}"
    if not seen:
        raise AromniError("no text given: stdin held no text")


def run(
    texts: Annotated[Optional[List[str]], typer.Argument(
        metavar="TEXT", help="Texts, one sequence each; none or - reads stdin, one sequence per line.")] = None,
    output: Output = "-",
    model: Model = None,
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Text -> joint-vocabulary token stream: the model's text ids of each text (no <s>, no template), one
    sequence per argument or per non-blank line of stdin, so that text composes with generate.
    Output: the line format on stdout (a layout header, then one line per text, written as each line
    arrives), or .npy/.json by the -o suffix. A text that gives no ids is skipped with a warning on stderr.

    \b
    Examples:
      echo "a red circle" | aromni tokenize-text | aromni generate --task t2i | aromni detok -o x.png
      aromni tokenize-text "Hello there." | aromni generate --task tts | aromni detok -o hello.wav
    """
    from aromni.core.api import load
    from aromni.core.tokens import TokenStream, write_tokens

    omni = load(model, device="cpu", model=False)
    if omni.text is None:
        raise AromniError(f"{omni.source or 'model'}: has no text tokenizer")
    layout = omni.vocab.fingerprint
    streaming = output == "-"
    out = sys.stdout.buffer
    if streaming:
        out.write(f"#aromni-layout={layout}\n".encode())
        out.flush()
    seqs: list[list[int]] = []
    for text, where in _texts(texts):
        ids = list(omni.text.encode(text)) if text.strip() else []
        if not ids:
            print(f"aromni: warning: {where}: {text!r} gives no text ids; skipped", file=sys.stderr, flush=True)
            continue
        if streaming:
            out.write((" ".join(map(str, ids)) + "\n").encode())
            out.flush()
        else:
            seqs.append(ids)
    if not streaming:
        if not seqs:
            raise AromniError("no text ids to write")
        try:
            write_tokens(TokenStream(seqs, layout), output)
        except OSError as e:
            raise AromniError(f"{output}: cannot write ({e.strerror or e})") from None
        log(f"{output}: {len(seqs)} sequence(s)", quiet)
