"""aromni's native bundle: one directory with the model, its vocabulary layout and its tokenizers.

Layout::

    aromni.json          {"format": "aromni-bundle", "version": 1, "family": ..., "model": ModelConfig,
                          "vocab": VocabLayout, "text_tokenizer": spec, "image_tokenizer": spec,
                          "speech_tokenizer": spec, "prompts": {...}, "decode": {task: {option: value}}}
    model.safetensors    backbone weights in aromni's (Meta-named) keys
    ...                  tokenizer files named by their specs

``decode`` (optional) holds the model's own decoding defaults per task (e.g. greedy image codes for a small
model), applied wherever the caller chose nothing (decoding.with_model_defaults).

A tokenizer spec is ``{"type": NAME, ...}``; ``TOKENIZER_LOADERS[kind][NAME](spec, root, device)`` loads it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .decoding import check_model_defaults
from .errors import AromniError, CheckpointError
from .loading import BUNDLE_FILE, FORMAT, load_state_into, read_meta
from .model import ModelConfig, Transformer
from .vocab import VocabLayout

__all__ = ["BUNDLE_FILE", "FORMAT", "Omni", "load_bundle", "load_tokenizer", "read_meta", "register_tokenizer",
           "save_bundle"]

# kind ("text" | "image" | "speech") -> type name -> loader(spec, root, device)
TOKENIZER_LOADERS: dict[str, dict[str, Callable[..., Any]]] = {"text": {}, "image": {}, "speech": {}}


def register_tokenizer(kind: str, name: str):
    """Decorator for a tokenizer loader ``fn(spec: dict, root: str, device) -> tokenizer``."""
    def deco(fn):
        TOKENIZER_LOADERS[kind][name] = fn
        return fn
    return deco


def _ensure_registered() -> None:
    # importing the modules registers their loaders; missing modules just mean fewer loaders
    import importlib
    for mod in ("text_tokenizer", "image_tokenizer", "speech_tokenizer"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise


@dataclass
class Omni:
    """A loaded model with everything needed to turn modalities into tokens and back."""

    model: Transformer
    vocab: VocabLayout
    family: str = "aromni"  # "ar-omni" selects the reference prompt templates
    text: Any = None
    image: Any = None
    speech: Any = None
    prompts: dict = field(default_factory=dict)
    decode: dict = field(default_factory=dict)  # task -> {option: value}: this model's decoding defaults
    source: str = ""
    engine: Any = None  # decodes for the tasks instead of generate.generate (same signature): a server's batcher

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device


def save_bundle(omni: Omni, root: str, write_weights=None) -> None:
    """Write ``omni`` as a native bundle (safetensors + aromni.json).

    ``write_weights(path)``: writes ``model.safetensors`` itself (a sharded model streamed tensor by tensor);
    ``omni.model`` then only provides the config.
    """
    from safetensors.torch import save_file

    os.makedirs(root, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT, "version": 1, "family": omni.family,
                            "model": omni.model.cfg.to_dict(), "vocab": omni.vocab.to_dict(), "prompts": omni.prompts}
    if omni.decode:
        meta["decode"] = omni.decode
    for kind, tok in (("text", omni.text), ("image", omni.image), ("speech", omni.speech)):
        if tok is not None:
            meta[f"{kind}_tokenizer"] = tok.save(root)
    if write_weights is not None:
        write_weights(os.path.join(root, "model.safetensors"))
    else:
        state = {k: v.detach().contiguous().cpu() for k, v in omni.model.state_dict().items()}
        tmp = os.path.join(root, "model.safetensors.tmp")
        save_file(state, tmp, metadata={"format": FORMAT})
        os.replace(tmp, os.path.join(root, "model.safetensors"))
    with open(os.path.join(root, BUNDLE_FILE), "w") as f:
        json.dump(meta, f, indent=1)


def load_tokenizer(kind: str, spec: dict | None, root: str, device="cpu"):
    if not spec:
        return None
    _ensure_registered()
    loader = TOKENIZER_LOADERS[kind].get(spec.get("type", ""))
    if loader is None:
        raise CheckpointError(f"{root}: unknown {kind} tokenizer type {spec.get('type')!r}")
    return loader(spec, root, device)


def load_bundle(root: str, device="cpu", dtype: torch.dtype = torch.float32, tokenizers: bool = True) -> Omni:
    """Load a native bundle onto ``device`` in ``dtype`` (weights memory-mapped, cast once)."""
    meta = read_meta(root)
    cfg = ModelConfig.from_dict(meta["model"])
    vocab = VocabLayout.from_dict(meta["vocab"])
    path = os.path.join(root, "model.safetensors")
    if not os.path.isfile(path):
        raise CheckpointError(f"{root}: model.safetensors is missing")
    from safetensors.torch import load_file
    try:
        state = load_file(path)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    model = load_state_into(cfg, state, device=device, dtype=dtype, source=path)
    try:
        decode = check_model_defaults(meta.get("decode") or {}, f"{root}/{BUNDLE_FILE}")
    except AromniError as e:
        raise CheckpointError(str(e)) from None
    omni = Omni(model=model, vocab=vocab, family=meta.get("family", "aromni"), prompts=meta.get("prompts", {}),
                decode=decode, source=root)
    if tokenizers:
        omni.text = load_tokenizer("text", meta.get("text_tokenizer"), root, device)
        omni.image = load_tokenizer("image", meta.get("image_tokenizer"), root, device)
        omni.speech = load_tokenizer("speech", meta.get("speech_tokenizer"), root, device)
    return omni
