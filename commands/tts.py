"""`aromni tts`: text -> speech, streamed as it is generated."""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Quant, Threads
from aromni.commands._common import (Device, Dtype, Json, Model, Output, Quiet, Seed, atomic_file, batch_items,
                                     binary_output, check_suffix, log, make_dir, text_arg)
from aromni.commands._decode import (Batch, BatchSize, Candidates, ChunkWords, Compat, Compile, Greedy, LeadIn, MaxNew,
                                     OutDir, RepPenalty, SpeechPad, Stats, Temperature, TopK, TopP, load_model,
                                     options_from, print_line)
from aromni.commands._remote import Host, Local, remote, remote_options
from aromni.commands._remote import tts as remote_tts
from aromni.core.errors import AromniError


def _stats_lines(st: dict) -> str:
    fa = f"{st['first_audio_s'] * 1000:.0f} ms" if st.get("first_audio_s") is not None else "n/a"
    rtf = f"{st['rtf']:.3f}" if st.get("rtf") is not None else "n/a"
    return (f"aromni: first audio {fa}, {st['tokens_per_s']:.1f} tokens/s, real-time factor {rtf} "
            f"({st['audio_s']:.2f}s of audio, {st['tokens']} tokens, {st['sentences']} sentence(s) or piece(s))")


def _single_checks(text: Optional[str], output: str, raw: bool, suffixes: tuple, json_out: bool) -> str:
    """The text of a one-text call, after the checks on its output."""
    if json_out and output == "-":
        raise AromniError("--json prints the result on stdout; write the audio with -o FILE")
    check_suffix(output, suffixes, "--raw audio" if raw else "WAV audio")
    return text_arg(text, "text")


def _remote_run(client, options: dict, text: Optional[str], output: str, raw: bool, seed: Optional[int],
                suffixes: tuple, stats: bool, json_out: bool, quiet: bool) -> None:
    res = remote_tts(client, _single_checks(text, output, raw, suffixes, json_out), options, seed, output, raw,
                     quiet)
    if stats:
        log(_stats_lines(res["stats"]))
    if json_out:
        json.dump({"output": output, "sample_rate": res["sample_rate"], "codes": res["codes"], **res["stats"]},
                  sys.stdout)
        print_line("")


def _batch_run(params: dict, suffixes: tuple, client) -> None:
    """``--batch``: every item decoded together (in-process, or by the server ``client`` talks to); WAVs (raw PCM
    with --raw) written to --out-dir."""
    from aromni.core.wav_stream import Pcm16Writer

    if params["text"] is not None:
        raise AromniError("give either TEXT or --batch, not both")
    quiet, seed = params["quiet"], params["seed"]
    d = params["out_dir"] or "."
    items = batch_items(params["batch"], "TTS items", "text", out_dir=d)
    paths = [it.output or os.path.join(d, f"tts_{n:04d}{suffixes[0]}") for n, it in enumerate(items)]
    for path in paths:
        check_suffix(path, suffixes, "audio")
    texts = [it.value for it in items]
    if client is not None:
        sr, results = client.tts_batch(texts, remote_options(params), seed)
    else:
        from aromni.core import tasks
        from aromni.core.audio_io import to_pcm16

        opts = options_from("tts", params)
        omni = load_model(params["model"], params["device"], params["dtype"], quiet, seed, params["quant"])
        sr = omni.speech.sample_rate if omni.speech is not None else 0
        results = [{"pcm": to_pcm16(r.wav), "codes": len(r.codes), "stats": r.stats}
                   for r in tasks.tts_batch(omni, texts, opts, seed=seed)]
    make_dir(d)
    for it, r, path in zip(items, results, paths):
        if not r["pcm"]:
            log(f"aromni: warning: line {it.line}: the model produced no speech; {path} not written", quiet)
            continue
        make_dir(os.path.dirname(path) or ".")
        with atomic_file(path) as f:
            w = Pcm16Writer(f, sr, raw=params["raw"])
            w.write(r["pcm"])
            w.close()
        print_line(json.dumps({"text": it.value, "output": path, **r["stats"]}) if params["json_out"] else path)
        if params["stats"]:
            log(_stats_lines(r["stats"]))


def run(
    text: Annotated[Optional[str], typer.Argument(help="Text to speak; missing or - reads stdin.")] = None,
    output: Output = "-",
    raw: Annotated[bool, typer.Option("--raw", help="Headerless PCM s16le mono at the codec's rate (said on stderr; "
                                                    "16000 Hz for the bundled model).")] = False,
    stats: Stats = False,
    batch: Batch = None,
    out_dir: OutDir = None,
    max_new_tokens: MaxNew = None,
    max_speech_tokens: Annotated[Optional[int], typer.Option(
        "--max-speech-tokens", help="Cap on speech codes per sentence (40 per second).")] = None,
    candidates: Candidates = None,
    chunk_words: ChunkWords = None,
    speech_pad: SpeechPad = None,
    lead_in: LeadIn = None,
    greedy: Greedy = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepPenalty = None,
    compat: Compat = False,
    batch_size: BatchSize = 8,
    compile: Compile = False,
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
    """Text -> speech as WAV (or raw PCM with --raw) on stdout or -o FILE.

    Audio is written while the model is still generating: long text is split into sentences that are spoken one
    after another (with --chunk-words N, or a model that sets it, into pieces of at most N words: the bundled
    default model says three words at a time; --chunk-words 0 speaks whole sentences). On a file the
    WAV header carries the exact length; on a pipe it says "unknown length" (0xFFFFFFFF), which ffmpeg, sox and
    most players accept. A file is written under a temporary name and appears only when complete. Empty or
    whitespace-only text, and text that is not UTF-8, is refused. --batch FILE.jsonl ({"text": ..., "output"?:
    name} per line; a name must stay inside --out-dir) decodes all items together and writes WAVs to --out-dir.

    \b
    Examples:
      aromni tts "Hello there." > hello.wav
      aromni tts --raw "Hello" | aplay -r 16000 -f S16_LE -t raw -   # the bundled model's rate
      echo "Read me." | aromni tts -o speech.wav --stats
    """
    suffixes = (".pcm", ".raw") if raw else (".wav",)
    client = remote(host, local, model)
    if batch is not None:
        _batch_run(locals(), suffixes, client)
        return
    if client is not None:
        _remote_run(client, remote_options(locals()), text, output, raw, seed, suffixes, stats, json_out, quiet)
        return
    from aromni.core import tasks
    from aromni.core.audio_io import AudioWriter

    opts = options_from("tts", locals())
    text = _single_checks(text, output, raw, suffixes, json_out)
    omni = load_model(model, device, dtype, quiet, seed, quant)
    sr = omni.speech.sample_rate if omni.speech is not None else 0
    if raw:
        log(f"aromni: raw PCM s16le mono {sr} Hz", quiet)
    with binary_output(output, "audio") as f:
        w = AudioWriter(f, sr, raw=raw)
        r = tasks.tts(omni, text, opts, on_audio=w.write, seed=seed)
        if len(r.wav) == 0:  # nothing was written yet: no header-only file
            raise AromniError("the model produced no speech for this text")
        w.close()
    if stats:
        log(_stats_lines(r.stats))
    if json_out:
        json.dump({"output": output, "sample_rate": sr, "codes": len(r.codes), **r.stats}, sys.stdout)
        print_line("")
