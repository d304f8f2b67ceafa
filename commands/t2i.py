"""`aromni t2i`: text -> image (PNG)."""
from __future__ import annotations

import io
import json
import os
from typing import Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Quant, Threads
from aromni.commands._common import (Device, Dtype, Json, Model, Output, Quiet, Seed, binary_output, refuse_tty,
                                     text_arg)
from aromni.commands._decode import (Batch, BatchSize, Candidates, Cfg, CfgImage, CfgText, Compat, Compile,
                                     ImageGreedy, ImageTemp, MaxNew, OutDir, decode_options, load_model, make_dir,
                                     print_line, read_jsonl)
from aromni.commands._remote import Host, Local, remote
from aromni.core.errors import AromniError, InputError


def output_paths(count: int, output: str, out_dir: Optional[str]) -> list[str]:
    """Where each image goes: "-" (one image), a file, a {i} pattern, or numbered files in --out-dir."""
    if out_dir is not None:
        if output != "-":
            raise AromniError("give either -o or --out-dir, not both")
        d = make_dir(out_dir)
        return [os.path.join(d, f"t2i_{i:04d}.png") for i in range(count)]
    if "{i" in output:
        try:
            return [output.format(i=i) for i in range(count)]
        except (KeyError, IndexError, ValueError) as e:
            raise AromniError(f"-o {output!r}: bad pattern ({e}); use {{i}}, e.g. out_{{i}}.png") from None
    if count == 1:
        return [output]
    raise AromniError(f"{count} images: give -o with {{i}} (e.g. -o out_{{i}}.png) or --out-dir DIR")


def run(
    text: Annotated[Optional[str], typer.Argument(help="Prompt text; missing or - reads stdin.")] = None,
    output: Output = "-",
    n: Annotated[int, typer.Option("--n", "-n", help="Images per prompt.")] = 1,
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
    quant: Quant = "none",
    threads: Threads = None,
    host: Host = None,
    local: Local = False,
) -> None:
    """Text -> PNG image(s). One image goes to stdout or -o FILE; several (--n, --batch) to -o with a {i}
    pattern or to --out-dir. Image i samples with seed --seed + i; CFG runs its three streams in one batch.
    --batch FILE.jsonl takes {"text": ...} per line.

    \b
    Examples:
      aromni t2i "a red circle on a blue background" > circle.png
      aromni t2i --n 4 -o cat_{i}.png "a cat"
    """
    from aromni.core import tasks

    if n < 1:
        raise AromniError("--n must be at least 1")
    if batch is not None:
        if text is not None:
            raise AromniError("give either TEXT or --batch, not both")
        items = read_jsonl(batch, "prompts")
        texts = []
        for k, it in enumerate(items, 1):
            if not isinstance(it.get("text"), str) or not it["text"].strip():
                raise InputError(f"item {k}: needs a non-empty \"text\"", batch)
            texts.append(it["text"])
    else:
        texts = [text_arg(text, "prompt")]
    paths = output_paths(len(texts) * n, output, out_dir)
    if json_out and paths == ["-"]:
        raise AromniError("--json prints the result on stdout; write the image with -o FILE or --out-dir")
    if paths == ["-"]:
        refuse_tty("a PNG image")
    opts = decode_options("t2i", compat, candidates=candidates, cfg=cfg, cfg_text=cfg_text, cfg_image=cfg_image,
                          image_temperature=image_temperature, image_greedy=image_greedy,
                          image_top_p=image_top_p, image_top_k=image_top_k, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, compile=compile)
    client = remote(host, local, model)
    if client is not None:
        images = client.t2i(texts, n, opts, seed)
    else:
        omni = load_model(model, device, dtype, quiet, seed, quant)
        images = tasks.t2i(omni, texts, n=n, opts=opts, seed=seed)
    for i, (img, path) in enumerate(zip(images, paths)):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        with binary_output(path, "a PNG image") as f:
            f.write(buf.getvalue())
        if json_out:
            print_line(json.dumps({"text": texts[i // n], "output": path}))
        elif path != "-" and len(paths) > 1:
            print_line(path)
