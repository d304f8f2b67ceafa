"""`aromni caption`: image -> text."""
from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Device, Dtype, Json, Model, Quant, Quiet, Seed, Threads, batch_items, input_bytes
from aromni.commands._decode import (Batch, BatchSize, Compat, Greedy, MaxNew, RepPenalty, Temperature, TopK, TopP,
                                     load_model, options_from)
from aromni.commands._confidence import print_answer
from aromni.commands._remote import Host, Local, remote, remote_options
from aromni.core.errors import AromniError


def run(
    images: Annotated[Optional[List[str]], typer.Argument(
        help="Image files; none or - reads stdin.", show_default=False)] = None,
    batch: Batch = None,
    instruction: Annotated[Optional[str], typer.Option(
        "--instruction", help="Instruction text (default: \"Describe this image.\").")] = None,
    max_new_tokens: MaxNew = None,
    greedy: Greedy = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepPenalty = None,
    compat: Compat = False,
    batch_size: BatchSize = 8,
    exif_transpose: Annotated[bool, typer.Option(
        "--exif-transpose", help="Turn photos upright by their EXIF orientation first (Meta's Chameleon does not).")
    ] = False,
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
    """Image -> text: one caption per line (JSON lines with --json), all inputs decoded together in batches.
    --batch FILE.jsonl takes {"image": path} per line.

    With --json each line carries the model's confidence: avg_logprob, first_logprob and min_logprob (mean,
    first and lowest log-probability of the chosen tokens), image_error where the model's rules use it (how far
    the image tokenizer's decode of the picture is from the picture, RMS in 8-bit levels) and low_confidence.
    Without it, a caption breaking the model's calibrated rules (the bundled model's, or any model with rules
    in its aromni.json) gets a "low confidence" warning on stderr (the image may be outside what the model
    knows)."""
    if batch is not None:
        if images:
            raise AromniError("give either image files or --batch, not both")
        paths = [it.value for it in batch_items(batch, "caption items", "image", is_path=True)]
    else:
        paths = list(images or ["-"])
    if paths.count("-") > 1:
        raise AromniError("stdin (-) can be given only once")
    client = remote(host, local, model)
    if client is not None:  # the server checks the images; its messages name the files
        options = remote_options(locals())
        data = [input_bytes(p, "image") for p in paths]
        for (_, name), a in zip(data, client.caption(data, options, seed, instruction, exif_transpose)):
            print_answer(name, a, json_out)
        return
    from aromni.core import tasks
    from aromni.core.image_tokenizer import open_image

    opts = options_from("caption", locals())
    data = [input_bytes(p, "image") for p in paths]
    pil = [open_image(b, name, exif_transpose=exif_transpose) for b, name in data]
    omni = load_model(model, device, dtype, quiet, seed, quant)
    if instruction is not None:
        omni.prompts = dict(omni.prompts or {})
        omni.prompts["instructions"] = {**(omni.prompts.get("instructions") or {}), "caption": instruction}
    answers = tasks.caption_answers(omni, pil, opts, seed=seed)
    for (_, name), a in zip(data, answers):
        print_answer(name, a, json_out)
