"""What a training config names, made real: the model to train, its vocabulary layout and its tokenizers.

Tokenizer directories: a native bundle (``aromni.json``) or the output of a tokenizer-training run
(``tokenizers.json``); both map ``text_tokenizer`` / ``image_tokenizer`` / ``speech_tokenizer`` to specs.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import torch

from ..bundle import BUNDLE_FILE, Omni, load_tokenizer
from ..errors import AromniError, CheckpointError
from ..model import build_model, get_config
from ..vocab import VocabLayout, arom_layout, compact_layout, get_layout

TOKENIZERS_FILE = "tokenizers.json"
KINDS = ("text", "image", "speech")


def read_tokenizer_specs(path: str) -> dict:
    """``{kind: spec}`` of a bundle or tokenizer directory."""
    for name in (TOKENIZERS_FILE, BUNDLE_FILE):
        fn = os.path.join(path, name)
        if os.path.isfile(fn):
            try:
                with open(fn, encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{fn}: unreadable ({e})") from None
            return {k: meta[f"{k}_tokenizer"] for k in KINDS if meta.get(f"{k}_tokenizer")}
    raise CheckpointError(f"{path}: not a tokenizer directory (no {TOKENIZERS_FILE} or {BUNDLE_FILE})")


def write_tokenizer_spec(root: str, kind: str, spec: dict) -> str:
    """Add (or replace) ``kind``'s spec in ``root/tokenizers.json``; several tokenizers may share a directory."""
    fn = os.path.join(root, TOKENIZERS_FILE)
    meta = {"format": "aromni-tokenizers", "version": 1}
    if os.path.isfile(fn):
        with open(fn, encoding="utf-8") as f:
            meta = json.load(f)
    meta[f"{kind}_tokenizer"] = spec
    tmp = fn + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, fn)
    return fn


def load_tokenizers(spec, device="cpu") -> dict:
    """``model.tokenizers`` -> ``{kind: tokenizer}``: one directory for all kinds, or ``{kind: directory}``."""
    if not spec:
        return {}
    out = {}
    if isinstance(spec, str):
        for kind, s in read_tokenizer_specs(spec).items():
            out[kind] = load_tokenizer(kind, s, spec, device)
        return out
    if not isinstance(spec, dict):
        raise AromniError("config: model.tokenizers must be a directory or {text: dir, image: dir, speech: dir}")
    for kind, path in spec.items():
        if kind not in KINDS:
            raise AromniError(f"config: model.tokenizers.{kind}: unknown kind (known: {', '.join(KINDS)})")
        if path:
            specs = read_tokenizer_specs(path)
            if kind not in specs:
                raise CheckpointError(f"{path}: holds no {kind} tokenizer")
            out[kind] = load_tokenizer(kind, specs[kind], path, device)
    return out


def resolve_vocab(spec, toks: dict) -> VocabLayout | None:
    """``model.vocab``: a preset name, ``{compact: {...}}``, a full layout dict, or null (from the tokenizers)."""
    if spec is None:
        if not toks:
            return None
        text, image, speech = toks.get("text"), toks.get("image"), toks.get("speech")
        return compact_layout(text=getattr(text, "vocab_size", 0) if text else 0,
                              image=image.codebook_size if image else 0,
                              audio=speech.codebook_size if speech else 0,
                              image_tokens=image.n_tokens if image else 0)
    if isinstance(spec, dict) and "compact" in spec:
        try:
            return compact_layout(**spec["compact"])
        except TypeError as e:
            raise AromniError(f"config: model.vocab.compact: {e}") from None
    try:
        return get_layout(spec)
    except (TypeError, ValueError, KeyError) as e:
        raise AromniError(f"config: model.vocab: {e}") from None


def build_omni(cfg, device="cpu", model: bool = True) -> Omni:
    """The model (fp32, on CPU), vocabulary and tokenizers for ``kind: lm`` / ``kind: pretokenize``.

    ``model=False``: vocabulary and tokenizers only (the sharded trainer reads the weights itself).
    """
    m = cfg.model
    toks = load_tokenizers(m.tokenizers)
    want = model and cfg.kind == "lm"
    if m.base:
        from ..api import load

        omni = load(m.base, device="cpu", dtype=torch.float32, model=want)
        if m.vocab is not None:
            v = resolve_vocab(m.vocab, toks)
            assert v is not None  # None only for a null spec
            if v.fingerprint != omni.vocab.fingerprint:
                raise AromniError(f"config: model.vocab {v.fingerprint} differs from the base model's "
                                  f"{omni.vocab.fingerprint}")
        if m.overrides and omni.model is not None:
            raise AromniError("config: model.overrides only apply to a fresh model (model.config), not model.base")
    else:
        mc, vocab = fresh_config(m, toks)
        net = build_model(mc, device="cpu", seed=cfg.seed) if want else None
        # model=False: an Omni without a model, as api.load(model=False) makes (Omni.model is typed for the usual case)
        omni = Omni(model=net, vocab=vocab, family=m.family)  # type: ignore[arg-type]
    for kind, tok in toks.items():
        setattr(omni, kind, tok)
    if omni.text is not None:
        from ..text_tokenizer import check_text_tokenizer

        check_text_tokenizer(omni.text, omni.vocab)
    return omni


def fresh_config(m, toks: dict):
    """(ModelConfig, vocabulary) of a randomly initialised model: ``model.config`` + overrides, vocab-sized."""
    try:
        mc = get_config(m.config, **(m.overrides or {}))
    except KeyError as e:
        raise AromniError(f"config: model.config: {e.args[0]}") from None
    except TypeError as e:
        raise AromniError(f"config: model.overrides: {e}") from None
    vocab = resolve_vocab(m.vocab, toks)
    if vocab is None:
        if mc.vocab_size != arom_layout().vocab_size:
            raise AromniError("config: set model.vocab (e.g. ar-omni or {compact: {...}}) or model.tokenizers")
        vocab = arom_layout()
    if mc.vocab_size != vocab.vocab_size:
        mc = replace(mc, vocab_size=vocab.vocab_size)
    return mc, vocab
