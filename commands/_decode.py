"""Decoding options and helpers shared by generate, tts, asr, caption, t2i and chat."""
from __future__ import annotations

import sys
import time
from typing import Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import log, make_dir, read_jsonl, resolve_rel  # noqa: F401 - re-exported for commands

MaxNew = Annotated[Optional[int], typer.Option("--max-new-tokens", help="Cap on generated tokens (task default).")]
Temperature = Annotated[Optional[float], typer.Option("--temperature", help="Text/speech sampling temperature.")]
TopP = Annotated[Optional[float], typer.Option("--top-p", help="Text/speech nucleus mass (1 = off).")]
TopK = Annotated[Optional[int], typer.Option("--top-k", help="Text/speech top-k (0 = off).")]
RepPenalty = Annotated[Optional[float], typer.Option("--repetition-penalty", help="Penalty on repeated text tokens.")]
Greedy = Annotated[Optional[bool], typer.Option(
    "--greedy/--sample", show_default=False,
    help="Greedy or sampled text/speech for the whole response. Default: the task's mode with AR-Omni's "
         "switching (greedy after <-Ins-> and <boa>, sampling after <-Res-> and <eoa>).")]
CfgText = Annotated[Optional[float], typer.Option("--cfg-text", help="Image CFG text scale (default 3.07).")]
CfgImage = Annotated[Optional[float], typer.Option(
    "--cfg-image", help="Image CFG image scale (t2i default 1.0; matters for text-only prompts too).")]
ImageTemp = Annotated[Optional[float], typer.Option("--image-temperature", help="Image sampling temperature.")]
ImageGreedy = Annotated[Optional[bool], typer.Option(
    "--image-greedy/--image-sample", show_default=False,
    help="Argmax or sampled image codes (default: sampled, unless the model's bundle sets its own default).")]
Cfg = Annotated[Optional[bool], typer.Option(
    "--cfg/--no-cfg", show_default=False,
    help="Classifier-free guidance for image codes (default: on, unless the model's bundle turns it off; "
         "--cfg-text/--cfg-image imply --cfg).")]
Candidates = Annotated[Optional[int], typer.Option(
    "--candidates", help="Best of N: draw N (the first as set, the rest sampled) and keep the one the model's own "
                         "captioner (images) or recogniser (speech) finds most likely to say the prompt, an "
                         "image's score raised by how many of the N its captioner describes alike "
                         "(default 1, or the model's own).")]
ChunkWords = Annotated[Optional[int], typer.Option(
    "--chunk-words", help="Speak each sentence in pieces of at most N words, one decode each, each at most "
                          "0.5 s + N x 0.5 s long (0: whole sentences; default 0, or the model's own).")]
SpeechPad = Annotated[Optional[int], typer.Option(
    "--speech-pad", help="Decode N frames of the codec's silence code around each speech span as context, then "
                         "cut them off (the decoder blurs a span's first and last sounds; default 0, or the "
                         "model's own).")]
LeadIn = Annotated[Optional[float], typer.Option(
    "--lead-in", help="Seconds of silence before the speech (default 0, or the model's own).")]
Compat = Annotated[bool, typer.Option(
    "--compat", help="Reproduce the reference decoder exactly (masks, penalty, caps); see README.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Rows decoded together.")]
Compile = Annotated[bool, typer.Option(
    "--compile",
    help="Static KV cache + torch.compile'd decode step (CUDA graphs on GPU; on CPU for one row only; slow warm-up).")]
Batch = Annotated[Optional[str], typer.Option("--batch", help="JSONL file of inputs, decoded together in batches.")]
OutDir = Annotated[Optional[str], typer.Option("--out-dir", "-d", help="Directory for output files.")]
Stats = Annotated[bool, typer.Option("--stats", help="Print first-audio latency, tokens/s and real-time factor "
                                                     "on stderr.")]


# the decoding options a command may take, by the name of its parameter (= the DecodeOptions field)
DECODE_PARAMS = ("max_new_tokens", "max_speech_tokens", "greedy", "temperature", "top_p", "top_k",
                 "repetition_penalty", "cfg", "cfg_text", "cfg_image", "image_temperature", "image_greedy",
                 "image_top_p", "image_top_k", "candidates", "chunk_words", "speech_pad", "lead_in", "batch_size",
                 "compile")


def decode_options(task: str, compat: bool = False, **kw):
    """DecodeOptions for ``task`` with the CLI overrides that were given (None = task default)."""
    from aromni.core.decoding import options_for

    return options_for(task, compat=compat, **kw)


def given_decode(params: dict) -> dict:
    """The decoding options among a command's parameters (pass ``locals()``) that were given (not None)."""
    return {k: params[k] for k in DECODE_PARAMS if params.get(k) is not None}


def options_from(task: str, params: dict):
    """DecodeOptions for ``task`` from a command's parameters (pass ``locals()``): every decoding option it
    takes and ``compat`` (and its ``seed``); checked before any model is loaded."""
    from aromni.core.checks import check_number

    check_number("seed", params.get("seed"))
    return decode_options(task, bool(params.get("compat")), **given_decode(params))


def load_model(model: Optional[str], device: str, dtype: str, quiet: bool, seed: Optional[int] = None,
               quant: str = "none"):
    """api.load with a timing line on stderr (device, threads, quantisation); seeds python/numpy/torch."""
    import torch

    from aromni.core.api import load
    from aromni.core.device import seed_everything

    seed_everything(seed)
    t0 = time.perf_counter()
    omni = load(model, device=device, dtype=dtype, quant=quant)
    n = torch.get_num_threads()
    how = f"{omni.device}, {n} thread{'s' if n > 1 else ''}" + (f", {quant}" if quant not in ("", "none") else "")
    log(f"aromni: loaded {omni.source or 'model'} ({how}) in {time.perf_counter() - t0:.1f}s", quiet)
    return omni


def print_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def one_line(text: str) -> str:
    """Text for line-oriented output (one result per line)."""
    return " ".join(text.split())
