"""`aromni tokenize-audio`."""
from __future__ import annotations

import sys
from typing import List

import typer
from typing_extensions import Annotated

from aromni.commands._common import Threads
from aromni.commands._common import TOKEN_SUFFIXES, Device, Model, Output, Quiet, check_suffix, input_bytes, log
from aromni.core.errors import AromniError


def run(
    audio: Annotated[List[str], typer.Argument(help="Audio files (any format soundfile reads); - reads stdin.")],
    output: Output = "-",
    codes: Annotated[bool, typer.Option("--codes", help="Raw codec codes 0..K-1 instead of <boa> ids <eoa>.")] = False,
    model: Model = None,
    quiet: Quiet = False,
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """Audio -> joint-vocabulary token stream: one sequence ``<boa> audio ids <eoa>`` per input (40 codes/s for
    WavTokenizer). Channels are averaged to mono (up to 8) and audio is resampled to the codec's rate.
    Output: the line format on stdout (one line per input, written as each file is done), or .npy/.json by
    the -o suffix."""
    from aromni.core.api import load
    from aromni.core.audio_io import load_audio
    from aromni.core.tokens import TokenStream, audio_block, write_tokens

    if audio.count("-") > 1:
        raise AromniError("stdin (-) can be given only once")
    check_suffix(output, TOKEN_SUFFIXES, "a token stream")
    omni = load(model, device=device, model=False)
    tok = omni.speech
    if tok is None:
        raise AromniError(f"{omni.source or 'model'}: has no speech tokenizer")
    layout = None if codes else omni.vocab.fingerprint
    streaming = output == "-"
    # the layout header goes out with the first sequence: a first file that cannot be read leaves stdout empty
    header = f"#aromni-layout={layout}\n" if streaming and layout else ""
    seqs: list[list[int]] = []
    bar = None
    if len(audio) > 1 and not quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(audio), unit="file", file=sys.stderr, desc="tokenize-audio")
    for path in audio:
        data, name = input_bytes(path, "audio")
        wav = load_audio(data, tok.sample_rate, source=name, resampler=tok.resampler)
        c = tok.encode(wav).tolist()
        seq = c if codes else audio_block(c, omni.vocab)
        if streaming:
            sys.stdout.buffer.write((header + " ".join(map(str, seq)) + "\n").encode())
            header = ""
            sys.stdout.buffer.flush()
        else:
            seqs.append(seq)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not streaming:
        write_tokens(TokenStream(seqs, layout), output)
        log(f"{output}: {len(seqs)} sequence(s)", quiet)
