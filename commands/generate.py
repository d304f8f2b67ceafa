"""`aromni generate`: token stream in, token stream out, streamed token by token."""
from __future__ import annotations

import sys
from functools import partial
from typing import IO, Iterator, Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Device, Dtype, Model, Output, Quant, Quiet, Seed, Threads, log
from aromni.commands._decode import (BatchSize, Cfg, CfgImage, CfgText, Compat, Compile, Greedy, ImageGreedy,
                                     ImageTemp, MaxNew, RepPenalty, Temperature, TopK, TopP, decode_options, load_model)
from aromni.commands._remote import Host, Local, remote, remote_options
from aromni.core.errors import AromniError


class OrderedLines:
    """Writes rows in input order as lines: the earliest unfinished row streams token by token, later rows are
    held until every row before them is complete."""

    def __init__(self, writer, n: int, prefix: list[list[int]] | None = None):
        self.w, self.n, self.head = writer, n, 0
        self.buf: list[list[int]] = [list(p) for p in prefix] if prefix else [[] for _ in range(n)]
        self.done = [False] * n
        self._flush_head()

    def _flush_head(self) -> None:
        while self.head < self.n:
            toks = self.buf[self.head]
            self.w.tokens(toks)
            toks.clear()
            if not self.done[self.head]:
                return
            self.w.end()
            self.head += 1

    def token(self, row: int, tok: int) -> None:
        if row == self.head:
            self.w.token(tok)
        else:
            self.buf[row].append(tok)

    def finish(self, row: int) -> None:
        self.done[row] = True
        if row == self.head:
            self._flush_head()


def _stdin_sequences(stdin: IO[bytes]) -> Iterator[tuple[list[int], Optional[str]]]:
    """Whole NPY/JSON on stdin, or lines decoded one by one as they arrive."""
    from aromni.core.tokens import NPY_MAGIC, iter_line_sequences, parse_tokens

    head = stdin.peek(8)[:8] if hasattr(stdin, "peek") else b""
    if head.startswith(NPY_MAGIC) or head.lstrip()[:1] in (b"[", b"{"):
        ts = parse_tokens(stdin.read(), "<stdin>")
        for s in ts.sequences:
            yield s, ts.layout
        return
    yield from iter_line_sequences(stdin, "<stdin>")


def run(
    tokens: Annotated[str, typer.Argument(help="Prompt token stream (NPY, JSON or lines of ids); - for stdin.")] = "-",
    output: Output = "-",
    task: Annotated[str, typer.Option(
        "--task", help="chat, text, asr, caption, tts, t2i or s2i: the prompt template a bare input is wrapped in, "
                       "and the task's masks and decoding defaults.")] = "chat",
    raw_prompt: Annotated[bool, typer.Option(
        "--raw-prompt", help="Send each input as it is (no prompt template); --task still sets masks and "
                             "defaults.")] = False,
    max_new_tokens: MaxNew = None,
    greedy: Greedy = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepPenalty = None,
    cfg: Cfg = None,
    cfg_text: CfgText = None,
    cfg_image: CfgImage = None,
    image_temperature: ImageTemp = None,
    image_greedy: ImageGreedy = None,
    echo: Annotated[bool, typer.Option("--echo", help="Write each prompt before its generated tokens.")] = False,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", help="lines (streamed), json or npy; default from the -o suffix, else lines.")] = None,
    compat: Compat = False,
    batch_size: BatchSize = 8,
    compile: Compile = False,
    model: Model = None,
    seed: Seed = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    quiet: Quiet = False,
    quant: Quant = "none",
    threads: Threads = None,
    host: Host = None,
    local: Local = False,
) -> None:
    """Answer token streams with the model: one output line per input sequence (the answer, or the prompt and
    the answer with --echo), written token by token as they are decoded.

    A bare input (one that does not start with <s>) is wrapped in the model's prompt template for --task:
    asr takes one speech span (<boa> ids <eoa>, as tokenize-audio writes it), caption one image span (as
    tokenize-image writes it), s2i one speech span, tts and t2i text ids (as tokenize-text writes them), chat
    text, images and at most one speech span, text any text. The tts, t2i and s2i templates end by opening
    the answer's span (<boa>, <boi>, <-Ins->); that marker starts the output line, so each line is a whole
    answer that detok reads.

    An input that starts with <s> is already a prompt and is sent as it is, as is every input with
    --raw-prompt; a prompt ending inside an open <boi> or <boa> span continues that image or speech. An
    answer that is empty (the model stopped at once) is reported on stderr.

    Input from a file is decoded in batches of --batch-size; lines piped on stdin are decoded one by one as
    they arrive. Row i samples with seed --seed + i, so batching never changes a row's output.

    \b
    Examples:
      aromni tokenize-audio speech.wav | aromni generate --task asr | aromni detok
      echo "a red circle" | aromni tokenize-text | aromni generate --task t2i | aromni detok -o x.png
      aromni tokenize-image cat.png | aromni generate --task caption | aromni detok
    """
    from aromni.core.tokens import LineWriter, TokenStream, cut_at_stop, read_tokens, write_tokens

    fmt = fmt or ("npy" if output.endswith(".npy") else "json" if output.endswith(".json") else "lines")
    if fmt not in ("lines", "json", "npy"):
        raise AromniError(f"--format must be lines, json or npy, not {fmt!r}")
    if fmt == "npy" and output == "-":
        from aromni.commands._common import refuse_tty
        refuse_tty("NPY data")
    if tokens == "-" and (sys.stdin is None or sys.stdin.isatty()):
        raise AromniError("no token stream given: pass a file or pipe it on stdin")
    client = remote(host, local, model)
    if client is None:
        opts = decode_options(task, compat, max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                              top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, cfg=cfg,
                              cfg_text=cfg_text, cfg_image=cfg_image, image_temperature=image_temperature,
                              image_greedy=image_greedy, batch_size=batch_size, compile=compile)
    else:
        options = remote_options(locals())
    stream_file = None if tokens == "-" else read_tokens(tokens)  # parse errors before the model loads
    if client is not None:  # the server applies the model's defaults and builds the prompts
        from aromni.core.client import fresh_seed

        v, ctx = client.vocab(), None
        s0 = seed if seed is not None else fresh_seed()
        decode = partial(client.generate, v.fingerprint, task, options=options)
    else:
        from aromni.core.decoding import with_model_defaults
        from aromni.core.generate import generate
        from aromni.core.prompts import PromptContext
        from aromni.core.rows import base_seed

        omni = load_model(model, device, dtype, quiet, seed, quant)
        opts = with_model_defaults(opts, omni.decode)
        v = omni.vocab
        ctx = None if raw_prompt or omni.text is None else PromptContext.of(omni)
        s0 = base_seed(seed)
        decode = partial(generate, omni.model, v, opts=opts)
    collected: list[list[int]] = []
    out = None
    if fmt == "lines":
        out = sys.stdout.buffer if output == "-" else open(output, "wb")
    writer = LineWriter(out, v.fingerprint) if out is not None else None

    def wrap(seq: list[int], source: str) -> tuple[list[int], list[int]]:
        if raw_prompt or (seq and seq[0] == v.bos):
            return seq, []
        if client is not None:
            return client.task_prompt(task, seq, compat, source)
        if ctx is None:
            raise AromniError(f"{omni.source or 'model'}: has no text tokenizer to build a {task} prompt; "
                              "pass --raw-prompt to send the ids as they are")
        from aromni.core.prompts import task_prompt

        return task_prompt(ctx, task, seq, compat, source)

    def decode_batch(inputs: list[list[int]], first: int, source: str) -> None:
        wrapped = [wrap(s, source) for s in inputs]
        prompts = [p for p, _ in wrapped]
        heads = [p if echo else opened for p, opened in wrapped]
        lines = OrderedLines(writer, len(prompts), heads) if writer else None
        g = decode(prompts, seeds=[s0 + first + k for k in range(len(prompts))],
                   on_token=lines.token if lines else None, on_finish=lines.finish if lines else None)
        if writer is None:
            collected.extend([h + t for h, t in zip(heads, g.tokens)])
        for k, (seq, toks) in enumerate(zip(inputs, g.tokens)):
            if seq and not cut_at_stop(toks, v):
                hint = "" if wrapped[k][0] is not seq else (
                    " (the input was sent as it is: a bare span needs --task's template, without --raw-prompt)")
                print(f"aromni: warning: {source}: sequence {first + k + 1}: the model's answer is empty{hint}",
                      file=sys.stderr, flush=True)
        log(f"aromni: {g.new_tokens} tokens in {g.prefill_s + g.decode_s:.2f}s "
            f"({g.tokens_per_s:.1f} tok/s decode)", quiet)

    try:
        if stream_file is not None:
            v.check_compatible(stream_file.layout, tokens)
            seqs = stream_file.sequences
            if not seqs:
                raise AromniError(f"{tokens}: no token sequences")
            for i in range(0, len(seqs), batch_size):
                decode_batch(seqs[i: i + batch_size], i, tokens)
        else:
            n = 0
            for seq, layout in _stdin_sequences(sys.stdin.buffer):
                v.check_compatible(layout, "<stdin>")
                decode_batch([seq], n, "<stdin>")
                n += 1
            if n == 0:
                raise AromniError("<stdin>: no token sequences")
        if writer is None:
            write_tokens(TokenStream(collected, v.fingerprint), output, fmt, out=sys.stdout.buffer)
    finally:
        if out is not None and out is not sys.stdout.buffer:
            out.close()
