"""`aromni t2i`: text -> image (PNG)."""
from __future__ import annotations

import io
import json
import os
from typing import Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Quant, Threads
from aromni.commands._common import (IMAGE_SUFFIXES, Device, Dtype, Json, Model, Output, Quiet, Seed, batch_items,
                                     binary_output, check_suffix, make_dir, refuse_tty, text_arg)
from aromni.commands._decode import (Batch, BatchSize, Candidates, Cfg, CfgImage, CfgText, Compat, Compile,
                                     ImageGreedy, ImageTemp, MaxNew, OutDir, load_model, options_from, print_line)
from aromni.core.checks import check_number
from aromni.commands._remote import Host, Local, remote, remote_options
from aromni.core.errors import AromniError


def output_paths(count: int, output: str, out_dir: Optional[str], names: Optional[list] = None) -> list[str]:
    """Where each image goes: "-" (one image), a file, a {i} pattern, or in --out-dir the batch items' own
    names (``names``, already confined to it) or numbered files."""
    if out_dir is not None:
        if output != "-":
            raise AromniError("give either -o or --out-dir, not both")
        paths = [(names[i] if names and names[i] else None) or os.path.join(out_dir, f"t2i_{i:04d}.png")
                 for i in range(count)]
    elif "{i" in output:
        try:
            paths = [output.format(i=i) for i in range(count)]
        except (KeyError, IndexError, ValueError) as e:
            raise AromniError(f"-o {output!r}: bad pattern ({e}); use {{i}}, e.g. out_{{i}}.png") from None
    elif count == 1:
        paths = [output]
    else:
        raise AromniError(f"{count} images: give -o with {{i}} (e.g. -o out_{{i}}.png) or --out-dir DIR")
    for p in paths:
        check_suffix(p, IMAGE_SUFFIXES, "an image")
    return paths


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def run(
    text: Annotated[Optional[str], typer.Argument(help="Prompt text; missing or - reads stdin.")] = None,
    output: Output = "-",
    n: Annotated[int, typer.Option("--n", "-n", help="Images per prompt (sampled at the image temperature even "
                                   "where the model draws argmax by default, unless --image-greedy).")] = 1,
    batch: Batch = None,
    out_dir: OutDir = None,
    candidates: Candidates = None,
    cfg: Cfg = None,
    cfg_text: CfgText = None,
    cfg_image: CfgImage = None,
    image_temperature: ImageTemp = None,
    image_greedy: ImageGreedy = None,
    image_top_p: Annotated[Optional[float], typer.Option("--image-top-p", help="Image nucleus mass.")] = None,
    image_top_k: Annotated[Optional[int], typer.Option("--image-top-k", help="Image top-k (0 = off).")] = None,
    scale: Annotated[Optional[int], typer.Option(
        "--scale", help="Write the picture this many times larger (1: the model's own pixels). Default: the "
                        "smallest whole factor giving at least 256 px (8x for the bundled model's 32 px pictures).",
        show_default=False)] = None,
    size: Annotated[Optional[int], typer.Option(
        "--size", help="Write the picture with its longer side this many pixels (instead of --scale).",
        show_default=False)] = None,
    upscale_filter: Annotated[str, typer.Option(
        "--upscale", help="How to enlarge: nearest (each pixel a sharp block, exactly as generated) or lanczos "
                          "(smooth).")] = "nearest",
    max_new_tokens: MaxNew = None,
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
    """Text -> PNG image(s). One image goes to stdout or -o FILE; several (--n, --batch) to -o with a {i}
    pattern or to --out-dir. Image i samples with seed --seed + i; CFG runs its three streams in one batch.
    Small pictures are written enlarged to at least 256 px (--scale, --size, --upscale).
    --batch FILE.jsonl takes {"text": ..., "output"?: name} per line (a name must stay inside --out-dir).

    \b
    Examples:
      aromni t2i "a large red circle on the left" > circle.png
      aromni t2i --n 4 -o cat_{i}.png "a cat"
      aromni t2i --scale 1 "a small blue square" > native.png
    """
    check_number("n", n)
    from aromni.core import upscale

    upscale.check(scale, size, upscale_filter)
    names = None
    if batch is not None:
        if text is not None:
            raise AromniError("give either TEXT or --batch, not both")
        items = batch_items(batch, "prompts", "text", out_dir=out_dir or ".")
        texts = [it.value for it in items]
        if n == 1 and out_dir is not None:
            names = [it.output for it in items]
    else:
        texts = [text_arg(text, "prompt")]
    paths = output_paths(len(texts) * n, output, out_dir, names)
    if json_out and paths == ["-"]:
        raise AromniError("--json prints the result on stdout; write the image with -o FILE or --out-dir")
    if paths == ["-"]:
        refuse_tty("a PNG image")
    client = remote(host, local, model)
    if client is not None:
        options = remote_options(locals())
        if out_dir is not None:
            make_dir(out_dir)
        pngs = client.t2i(texts, n, options, seed)  # the PNG files the in-process path writes
    else:
        from aromni.core import tasks

        opts = options_from("t2i", locals())
        if out_dir is not None:
            make_dir(out_dir)
        omni = load_model(model, device, dtype, quiet, seed, quant)
        pngs = [_png(img) for img in tasks.t2i(omni, texts, n=n, opts=opts, seed=seed)]
    pngs = [upscale.upscale_png(d, scale, size, upscale_filter) for d in pngs]
    for i, (data, path) in enumerate(zip(pngs, paths)):
        if path != "-":
            make_dir(os.path.dirname(path) or ".")
        with binary_output(path, "a PNG image") as f:
            f.write(data)
        if json_out:
            print_line(json.dumps({"text": texts[i // n], "output": path}))
        elif path != "-" and len(paths) > 1:
            print_line(path)
