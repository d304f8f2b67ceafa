"""`aromni corpus`."""
from __future__ import annotations

import json
import os

import typer
from typing_extensions import Annotated

from aromni.commands._common import Json, Quiet, Seed, Threads, log, make_dir
from aromni.core.checks import check_numbers
from aromni.core.errors import AromniError


def run(
    out_dir: Annotated[str, typer.Argument(help="Folder to write train.jsonl, heldout.jsonl, img/ and wav/ into.")],
    preset: Annotated[str, typer.Option(
        "--preset", help="default (the bundled model's corpus: shapes scenes, also asked for in free phrasings; "
                         "espeak-ng voices), wide (plus everyday lines, a neural output voice and many input voices; "
                         "needs the voices extra), ci or ci-wide (tiny).")
    ] = "default",
    seed: Seed = None,
    sample_rate: Annotated[int, typer.Option(
        "--sample-rate", help="Speech sample rate in Hz: the rate of the codec that will tokenize it (the bundled "
                              "model's runs at 16000; AR-Omni's WavTokenizer at 24000).")] = 16000,
    no_speech: Annotated[bool, typer.Option("--no-speech", help="Images and text only (no espeak-ng needed).")]
    = False,
    workers: Annotated[int, typer.Option("--workers", help="Speech synthesis jobs at a time.")] = 2,
    quiet: Quiet = False,
    json_out: Json = False,
    threads: Threads = None,
) -> None:
    """Generate the synthetic tri-modal corpus (scenes, captions, synthetic speech) reproducibly from a seed.

    Same seed, same manifests (byte for byte). Speech files are content-addressed, so rebuilding into the
    same folder only synthesises what is new.
    """
    from aromni.core.corpus.build import PRESETS, build_corpus
    from aromni.core.corpus.speech import espeak_path

    if preset not in PRESETS:
        raise AromniError(f"unknown preset {preset!r} (choose from: {', '.join(PRESETS)})")
    check_numbers(sample_rate=sample_rate, workers=workers, seed=seed)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise AromniError(f"{out_dir}: exists and is not a folder")
    if not no_speech and espeak_path() is None:
        raise AromniError("espeak-ng is not installed (apt-get install espeak-ng); or pass --no-speech")
    make_dir(out_dir)
    summary = build_corpus(out_dir, seed=0 if seed is None else seed, preset=preset, sample_rate=sample_rate,
                           speech=not no_speech, workers=workers, progress=not quiet)
    if json_out:
        print(json.dumps(summary))
    lines = {k: sum(v.values()) for k, v in summary["lines"].items()}
    log(f"{out_dir}: {lines['train']} train + {lines['heldout']} held-out lines, {summary['images']} images, "
        f"{summary['utterances']} utterances ({summary['speech_hours'] * 60:.1f} min), "
        f"{summary['bytes'] / 1e6:.0f} MB in {summary['seconds']['total']:.0f} s", quiet)
