"""--host / --local: the commands that decode (tts, asr, caption, t2i, chat, generate) send their work to a
running ``aromni serve`` when one is named, and write what they would have written in-process.

The remote path imports no model code: options are checked and sent as given (``request_options``), and the
answers (PCM16 audio, PNG images, ids) are written as they come."""
from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import log
from aromni.core.errors import AromniError

Host = Annotated[Optional[str], typer.Option(
    "--host", envvar="AROMNI_HOST", show_default=False,
    help="URL of a running 'aromni serve' (e.g. http://127.0.0.1:8180) that does the work with its loaded "
         "model; the output is the same as in-process. Default: $AROMNI_HOST; unset: in-process.")]
Local = Annotated[bool, typer.Option("--local", help="Run in-process even when $AROMNI_HOST is set.")]


def remote(host: Optional[str], local: bool, model: Optional[str]):
    """A client for the server the command should use, or None to run in-process."""
    from aromni.core.client import Client, host_from

    h = host_from(host, local)
    return Client(h, model=model) if h else None


def remote_options(params: dict, **extra) -> dict:
    """The request's decoding options from a command's parameters (pass ``locals()``): the decoding options it
    was given, ``compat`` and ``extra`` (e.g. chat's images/speech), checked as in-process (and its seed)."""
    from aromni.commands._decode import given_decode
    from aromni.core.checks import check_number
    from aromni.core.client import request_options

    check_number("seed", params.get("seed"))
    return request_options({**given_decode(params), **extra}, bool(params.get("compat")))


def tts(client, text: str, options: dict, seed: Optional[int], output: str, raw: bool, quiet: bool) -> dict:
    """Speech from the server, written as ``aromni tts`` writes it; returns the server's stats."""
    from aromni.commands._common import binary_output
    from aromni.core.wav_stream import Pcm16Writer

    with binary_output(output, "audio") as f:
        writer: list = []

        def start(sr: int) -> None:
            if raw:
                log(f"aromni: raw PCM s16le mono {sr} Hz", quiet)
            writer.append(Pcm16Writer(f, sr, raw=raw))

        res = client.tts(text, options, seed, on_start=start, on_audio=lambda c: writer[0].write(c))
        if not writer or not writer[0].n:  # nothing was written yet: no header-only file
            raise AromniError("the model produced no speech for this text")
        writer[0].close()
    return res
