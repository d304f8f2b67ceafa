"""`aromni tokenize-image`."""
from __future__ import annotations

import sys
from typing import List

import typer
from typing_extensions import Annotated

from aromni.commands._common import Threads
from aromni.commands._common import TOKEN_SUFFIXES, Device, Model, Output, Quiet, check_suffix, input_bytes, log
from aromni.core.errors import AromniError, CheckpointError


def run(
    images: Annotated[List[str], typer.Argument(help="Image files (any format Pillow reads); - reads stdin.")],
    output: Output = "-",
    codes: Annotated[bool, typer.Option(
        "--codes", help="Raw VQ codebook codes 0..K-1 instead of <boi> image ids <eoi>.")] = False,
    model: Model = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Images per encoder forward pass.")] = 8,
    exif_transpose: Annotated[bool, typer.Option(
        "--exif-transpose", help="Turn photos upright by their EXIF orientation first (Meta's Chameleon does not, "
        "so codes then differ from the reference's for such photos).")] = False,
    quiet: Quiet = False,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Images -> joint-vocabulary token stream: one sequence ``<boi> image ids <eoi>`` per image, in raster order;
    how many codes depends on the model's image tokenizer (1024 = 32x32 for the Chameleon VQGAN of AR-Omni, 64 =
    8x8 for the bundled default model). Preprocessed exactly as Meta's Chameleon: pixels as stored
    (EXIF orientation ignored unless --exif-transpose), transparency onto white, short side resized to the
    tokenizer's resolution (LANCZOS), centre crop.
    Output: the line format on stdout (a layout header, then one line per image, written as each batch is
    done), or .npy/.json by the -o suffix."""
    from aromni.core.api import load
    from aromni.core.image_tokenizer import open_image, probe_image
    from aromni.core.tokens import TokenStream, image_block, write_tokens

    if images.count("-") > 1:
        raise AromniError("stdin (-) can be given only once")
    check_suffix(output, TOKEN_SUFFIXES, "a token stream")
    stdin = input_bytes("-", "image") if "-" in images else None
    # every header is checked before the model loads and before any output, so a bad file fails fast
    for path in images:
        probe_image(*stdin) if path == "-" else probe_image(path)

    omni = load(model, device=device, model=False)
    tok = omni.image
    if tok is None:
        raise AromniError(f"{omni.source or 'model'}: has no image tokenizer")
    if not codes and omni.vocab.image_tokens != tok.n_tokens:
        raise CheckpointError(f"{omni.source or 'model'}: vocabulary expects {omni.vocab.image_tokens} codes per "
                              f"image but the image tokenizer makes {tok.n_tokens}")
    tok.batch_size = batch_size
    layout = None if codes else omni.vocab.fingerprint
    streaming = output == "-"
    out = sys.stdout.buffer
    if streaming and layout:
        out.write(f"#aromni-layout={layout}\n".encode())
        out.flush()
    seqs: list[list[int]] = []
    from tqdm import tqdm
    with tqdm(total=len(images), unit="img", file=sys.stderr, desc="tokenize-image",
              disable=quiet or len(images) < 2) as bar:
        for i in range(0, len(images), batch_size):
            batch = [open_image(*stdin, exif_transpose=exif_transpose) if p == "-"
                     else open_image(p, exif_transpose=exif_transpose) for p in images[i:i + batch_size]]
            for row in tok.encode(batch).tolist():
                seq = row if codes else image_block(row, omni.vocab)
                if streaming:
                    out.write((" ".join(map(str, seq)) + "\n").encode())
                else:
                    seqs.append(seq)
            if streaming:
                out.flush()
            bar.update(len(batch))
    if not streaming:
        write_tokens(TokenStream(seqs, layout), output)
        log(f"{output}: {len(seqs)} sequence(s) of {tok.n_tokens} codes", quiet)
