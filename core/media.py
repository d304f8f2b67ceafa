"""Media for the task API: images and speech to codes, codes to images, and the check that a model has the
part (a tokenizer, the weights) a task needs."""
from __future__ import annotations

import numpy as np
import torch

from .bundle import Omni
from .errors import AromniError, InputError
from .levels import no_speech


def need(omni: Omni, kind: str, task: str):
    """The model's ``kind`` tokenizer ("text", "image", "speech"); an error naming ``task`` when it has none or
    was loaded without its weights."""
    tok = getattr(omni, kind)
    if tok is None:
        raise AromniError(f"{task} needs a {kind} tokenizer, but the model at {omni.source or '?'} has none")
    if omni.model is None:
        raise AromniError(f"{task} needs the model weights (loaded with model=False)")
    return tok


def image_codes(omni: Omni, images: list) -> torch.Tensor:
    """PIL images (or paths / bytes) -> codes [N, image_tokens]."""
    return image_codes_with_error(omni, images, measure=False)[0]


def image_codes_with_error(omni: Omni, images: list,
                           measure: bool = True) -> tuple[torch.Tensor, list[float | None]]:
    """PIL images (or paths / bytes) -> codes [N, image_tokens] and, with ``measure``, each image's tokenizer
    round-trip error (``round_trip_error``: one decoder pass per image); None per image without ``measure`` or for
    a tokenizer that cannot tell."""
    from PIL import Image

    from .image_tokenizer import open_image

    pil = [im if isinstance(im, Image.Image) else open_image(im) for im in images]
    tell = getattr(omni.image, "round_trip_error", None) if measure else None
    codes, errors = tell(pil) if tell is not None else (omni.image.encode(pil), None)
    if codes.shape[1] != omni.vocab.image_tokens:
        raise AromniError(f"the image tokenizer makes {codes.shape[1]} codes per image but the model expects "
                          f"{omni.vocab.image_tokens}")
    return codes, list(errors) if errors is not None else [None] * len(pil)


def speech_codes(omni: Omni, wav: np.ndarray, name: str = "audio") -> list[int]:
    """Mono audio at the codec's rate -> its codes for a prompt. Audio without speech (``levels.no_speech``) is
    refused, ``name`` naming it: the model would hear a sentence in silence or noise anyway (docs/evaluation.md,
    "No speech")."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        raise InputError(f"{name} holds no samples")
    why = no_speech(wav, omni.speech.sample_rate)
    if why:
        raise InputError(f"{name} holds no speech: {why}")
    return omni.speech.encode(wav).tolist()


def decode_images(omni: Omni, rows: list[list[int]]) -> list:
    """Whole images' codes -> PIL images."""
    return omni.image.decode(torch.tensor([r for r in rows], dtype=torch.long))
