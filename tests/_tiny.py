"""Builders for tiny test artefacts: a native bundle with random weights and a Chameleon-layout tokenizer JSON.

Used by tests/conftest.py and by benchmarks (``sys.path.insert(0, "tests"); from _tiny import make_tiny_bundle``).
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

TINY_TEXT = 256  # ByteTokenizer


def tiny_parts(seed: int = 0):
    """(layout, model config, text, image, speech tokenizers) of the tiny test model."""
    from aromni.core.image_tokenizer import build_image_tokenizer
    from aromni.core.model import get_config
    from aromni.core.speech_tokenizer import build_speech_tokenizer
    from aromni.core.text_tokenizer import ByteTokenizer
    from aromni.core.vocab import compact_layout

    image = build_image_tokenizer("tiny", seed=seed)
    speech = build_speech_tokenizer("tiny", seed=seed)
    layout = compact_layout(text=TINY_TEXT, image=image.codebook_size, audio=speech.codebook_size,
                            image_tokens=image.n_tokens, name="tiny")
    # room for a prompt with one image, ~2 s of speech and some text
    audio_2s = 2 * -(-speech.sample_rate // speech.hop)
    need = image.n_tokens + audio_2s + 256
    cfg = replace(get_config("tiny"), vocab_size=layout.vocab_size, max_seq_len=(need + 63) // 64 * 64)
    return layout, cfg, ByteTokenizer(offset=layout.text_start), image, speech


def make_tiny_bundle(path: str, seed: int = 0) -> str:
    """Write a native bundle (tiny model, compact layout, bytes/VQGAN/WavTokenizer tokenizers) to ``path``."""
    from aromni.core.bundle import Omni, save_bundle
    from aromni.core.model import build_model

    layout, cfg, text, image, speech = tiny_parts(seed)
    model = build_model(cfg, device="cpu", seed=seed)
    save_bundle(Omni(model=model, vocab=layout, family="aromni", text=text, image=image, speech=speech), path)
    return path


# ----------------------------------------------------------------------------------------------
# A synthetic tokenizer JSON in the exact Chameleon layout (docs/formats.md)
# ----------------------------------------------------------------------------------------------
def _byte_alphabet() -> list[str]:
    """GPT-2 byte-level symbols, printable ones first (so ``!`` is the first text id, as in Chameleon)."""
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def chameleon_vocab(n_image: int = 8192, merges: tuple = ("Ġ t", "h e", "Ġt he", "Ġ a", "i n")) -> tuple[dict, list]:
    from aromni.core.text_tokenizer import image_code_name

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in range(n_image):
        vocab[image_code_name(c)] = 4 + c
    vocab["<eoss>"] = 8196
    vocab["<racm3:break>"] = 8197
    for i in range(8198, 16384):
        vocab[f"<reserved{i - 4:05d}>"] = i
    nxt = 16384
    for sym in _byte_alphabet():
        vocab[sym] = nxt
        nxt += 1
    merge_list = []
    for m in merges:
        a, b = m.split(" ")
        merge_list.append([a, b])
        vocab[a + b] = nxt
        nxt += 1
    return vocab, merge_list


def make_chameleon_json(path: str, n_image: int = 8192, vocab: dict | None = None, merges: list | None = None,
                        bos_post_processor: bool = True) -> str:
    """Write a byte-level BPE ``text_tokenizer.json`` with Chameleon's ids (image names at 4 + code).

    ``bos_post_processor`` adds a template that prepends ``<s>`` (as HF Llama-style tokenizers do), so
    tests can check that encode adds no special tokens.
    """
    if vocab is None:
        vocab, merges = chameleon_vocab(n_image)
    specials = [n for n, i in vocab.items() if i < 4 or 8196 <= i < 16384]
    added = [{"id": vocab[n], "content": n, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for n in specials]
    post = None
    if bos_post_processor:
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}
    obj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges or []},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return path
