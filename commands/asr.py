"""`aromni asr`: speech -> text."""
from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Device, Dtype, Json, Model, Quant, Quiet, Seed, Threads, batch_items, input_bytes
from aromni.commands._decode import (Batch, BatchSize, Compat, Greedy, MaxNew, RepPenalty, Temperature, TopK, TopP,
                                     load_model, options_from)
from aromni.core.checks import check_number
from aromni.commands._confidence import print_answer
from aromni.commands._remote import Host, Local, remote, remote_options
from aromni.core.errors import AromniError


def run(
    audio: Annotated[Optional[List[str]], typer.Argument(
        help="Audio files (any format soundfile reads); none or - reads stdin.", show_default=False)] = None,
    batch: Batch = None,
    window: Annotated[float, typer.Option("--window", help="Longest audio window per prompt, seconds; longer "
                                                           "audio is cut at silences.")] = 20.0,
    max_new_tokens: MaxNew = None,
    greedy: Greedy = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepPenalty = None,
    compat: Compat = False,
    batch_size: BatchSize = 8,
    model: Model = None,
    seed: Seed = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    json_out: Json = False,
    quiet: Quiet = False,
    host: Host = None,
    local: Local = False,
    quant: Quant = "none",
    threads: Threads = None,
) -> None:
    """Speech -> text: one line per input (JSON lines with --json). All inputs, and the windows of long
    inputs, are transcribed together in batches. --batch FILE.jsonl takes {"audio": path} per line.

    Audio without speech (silence, a tone, hum, steady noise or static in bursts: its level never rises and
    falls as syllables do, or its spectrum is flat) is not transcribed: its line is empty and stderr says "no
    speech" and why.

    With --json each line carries the model's confidence: avg_logprob, first_logprob and min_logprob (mean,
    first and lowest log-probability of the chosen tokens), codec_error (how badly the speech codec represents
    the audio), low_confidence and no_speech (with why_no_speech when true). Without it, an answer below the
    model's calibrated threshold (the bundled model's, or any model with rules in its aromni.json) gets a "low
    confidence" warning on stderr (the input may be outside what the model knows).

    \b
    Examples:
      aromni asr speech.wav
      cat speech.wav | aromni asr | aromni t2i > picture.png
    """
    if batch is not None:
        if audio:
            raise AromniError("give either audio files or --batch, not both")
        paths = [it.value for it in batch_items(batch, "ASR items", "audio", alt=("wav_path",), is_path=True)]
    else:
        paths = list(audio or ["-"])
    if paths.count("-") > 1:
        raise AromniError("stdin (-) can be given only once")
    check_number("window_s", window)
    client = remote(host, local, model)
    if client is not None:
        options = remote_options(locals())
        data = [input_bytes(p, "audio") for p in paths]
        for (_, name), a in zip(data, client.asr(data, options, seed, window)):
            print_answer(name, a, json_out)
        return
    from aromni.core import tasks
    from aromni.core.audio_io import load_audio

    opts = options_from("asr", locals())
    data = [input_bytes(p, "audio") for p in paths]  # read (and fail on missing files) before loading the model
    omni = load_model(model, device, dtype, quiet, seed, quant)
    if omni.speech is None:
        raise AromniError(f"{omni.source or 'model'}: has no speech tokenizer")
    wavs = [load_audio(b, omni.speech.sample_rate, source=name, resampler=omni.speech.resampler)
            for b, name in data]
    answers = tasks.asr_answers(omni, wavs, opts, seed=seed, window_s=window)
    for (_, name), a in zip(data, answers):
        print_answer(name, a, json_out)
