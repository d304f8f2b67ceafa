"""Text tokenizers: text <-> joint-vocabulary ids (TextTokenizer protocol, core/protocols.py).

- ``ByteTokenizer``: UTF-8 bytes, ``offset + byte`` (256 ids); tests and tiny models.
- ``SentencePieceTokenizer``: a SentencePiece ``.model`` whose piece ids are shifted by ``offset``
  (the layout's ``text_start``); the tokenizer aromni trains for its own models (core/train/bpe.py).
- ``ChameleonTextTokenizer``: Chameleon/AR-Omni ``text_tokenizer.json`` (HF ``tokenizers``); its ids are
  already joint ids (image names at 4..8195, text BPE from 16384; docs/formats.md, "Vocabulary").

``encode`` never adds BOS/EOS: prompts are built segment by segment (core/prompts.py) and control ids
are placed explicitly. ``decode`` skips every id outside the tokenizer's text range.
"""
from __future__ import annotations

import os
import re
import shutil

from .bundle import register_tokenizer
from .errors import CheckpointError
from .vocab import VocabLayout


def _check_range(kind: str, lo: int, hi: int, layout: VocabLayout) -> None:
    """Text ids ``[lo, hi)`` must lie inside the layout's text range."""
    if lo < layout.text_start or hi > layout.text_end:
        raise CheckpointError(
            f"{kind} text tokenizer uses ids [{lo}, {hi}) but vocabulary layout {layout.fingerprint} keeps text in "
            f"[{layout.text_start}, {layout.text_end}) ({layout.text_end - layout.text_start} ids); "
            f"use a tokenizer of at most that many pieces")


# ----------------------------------------------------------------------------------------------
# Bytes
# ----------------------------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as ids ``offset + byte``."""

    type_name = "bytes"
    vocab_size = 256

    def __init__(self, offset: int = 0):
        self.offset = int(offset)

    def encode(self, text: str) -> list[int]:
        o = self.offset
        return [o + b for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        o = self.offset
        data = bytes(int(i) - o for i in ids if 0 <= int(i) - o < 256)
        return data.decode("utf-8", errors="replace")

    def check_layout(self, layout: VocabLayout) -> None:
        _check_range("byte", self.offset, self.offset + 256, layout)

    def save(self, root: str) -> dict:
        return {"type": self.type_name, "offset": self.offset}


@register_tokenizer("text", "bytes")
def _load_bytes(spec: dict, root: str, device=None) -> ByteTokenizer:
    return ByteTokenizer(spec.get("offset", 0))


# ----------------------------------------------------------------------------------------------
# SentencePiece
# ----------------------------------------------------------------------------------------------
class SentencePieceTokenizer:
    """A SentencePiece model (file path or serialized bytes); piece id p is joint id ``offset + p``.

    With ``layout``, ``offset`` defaults to ``layout.text_start`` and the vocabulary is checked to fit
    the layout's text range.
    """

    type_name = "sentencepiece"
    FILE = "text_tokenizer.model"

    def __init__(self, model: str | bytes, offset: int | None = None, layout: VocabLayout | None = None):
        import sentencepiece as spm

        if isinstance(model, (bytes, bytearray)):
            proto, source = bytes(model), "<bytes>"
        else:
            source = str(model)
            try:
                with open(source, "rb") as f:
                    proto = f.read()
            except OSError as e:
                raise CheckpointError(f"{source}: cannot read SentencePiece model ({e.strerror or e})") from None
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ messages
            raise CheckpointError(f"{source}: not a SentencePiece model ({e})") from None
        self.proto = proto
        self.vocab_size = self.sp.get_piece_size()
        self.offset = int(offset if offset is not None else layout.text_start if layout is not None else 0)
        if layout is not None:
            self.check_layout(layout)

    def encode(self, text: str) -> list[int]:
        o = self.offset
        return [o + p for p in self.sp.encode(text)]

    def decode(self, ids) -> str:
        o, n = self.offset, self.vocab_size
        return self.sp.decode([int(i) - o for i in ids if 0 <= int(i) - o < n])

    def check_layout(self, layout: VocabLayout) -> None:
        _check_range("SentencePiece", self.offset, self.offset + self.vocab_size, layout)

    def save(self, root: str) -> dict:
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, self.FILE), "wb") as f:
            f.write(self.proto)
        return {"type": self.type_name, "file": self.FILE, "offset": self.offset, "vocab_size": self.vocab_size}


@register_tokenizer("text", "sentencepiece")
def _load_sentencepiece(spec: dict, root: str, device=None) -> SentencePieceTokenizer:
    tok = SentencePieceTokenizer(os.path.join(root, spec.get("file", SentencePieceTokenizer.FILE)),
                                 offset=spec.get("offset", 0))
    if "vocab_size" in spec and spec["vocab_size"] != tok.vocab_size:
        raise CheckpointError(f"{root}: text tokenizer has {tok.vocab_size} pieces, "
                              f"aromni.json says {spec['vocab_size']}")
    return tok


# ----------------------------------------------------------------------------------------------
# Chameleon / AR-Omni text_tokenizer.json
# ----------------------------------------------------------------------------------------------
IMAGE_NAME_RE = re.compile(r"IMGIMG([A-J]+)Z")
# Control names of the Chameleon vocabulary below the text BPE (docs/formats.md): they are never text.
CONTROL_NAME_RE = re.compile(r"<s>|</s>|<pad>|<unk>|<eoss>|<racm3:break>|<image>|<reserved\d+>|<sentinel:\d+>")
CHAMELEON_IMAGE_OFFSET = 4


def image_name_code(name: str) -> int | None:
    """``IMGIMG<digits as letters A-J>Z`` -> code (``IMGIMGFDZ`` -> 53); None for other names."""
    m = IMAGE_NAME_RE.fullmatch(name)
    if not m:
        return None
    return int("".join(str(ord(c) - ord("A")) for c in m.group(1)))


def image_code_name(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(int(code))) + "Z"


class ChameleonTextTokenizer:
    """Chameleon's BPE (``text_tokenizer.json`` or an HF ``tokenizer.json`` of the same vocabulary).

    Ids are joint ids. Text ids are ``[text_start, vocab_size)`` where ``text_start`` is the first id after
    the image names and control names (16384 for Chameleon); added special tokens are never text.
    On load, every image name must sit at ``id = code + 4`` (reference B.8), else CheckpointError.
    """

    type_name = "chameleon"
    FILE = "text_tokenizer.json"

    def __init__(self, json_path: str):
        from tokenizers import Tokenizer

        self.path = str(json_path)
        try:
            with open(self.path, encoding="utf-8") as f:
                self.json_text = f.read()
            self.tok = Tokenizer.from_str(self.json_text)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read text tokenizer ({e.strerror or e})") from None
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise CheckpointError(f"{self.path}: not a tokenizers JSON file ({e})") from None
        self.tok.no_truncation()
        self.tok.no_padding()
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        special = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}

        # image names -> codes, with the one-time check that code == id - 4
        self.image_codes: dict[int, int] = {}
        control_max = -1
        for name, i in sorted(vocab.items(), key=lambda kv: kv[1]):
            code = image_name_code(name)
            if code is not None:
                if code != i - CHAMELEON_IMAGE_OFFSET:
                    raise CheckpointError(
                        f"{self.path}: image token {name} (code {code}) has id {i}, expected {code + 4}; this "
                        f"vocabulary does not follow the Chameleon layout (image id = code + 4)")
                self.image_codes[i] = code
                control_max = max(control_max, i)
            elif CONTROL_NAME_RE.fullmatch(name):
                control_max = max(control_max, i)
        self.text_start = control_max + 1
        self._special = special

    @property
    def image_range(self) -> range:
        """Ids of the image-code names (empty for a text-only vocabulary)."""
        if not self.image_codes:
            return range(0)
        return range(min(self.image_codes), max(self.image_codes) + 1)

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: no BOS/EOS from the post-processor (prompts are encoded per segment)
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        # Reference: tokenizers' decode with special tokens skipped. Non-text ids (images, audio, control)
        # are dropped first. No cut at </s>: generation already stops there and </s> is not text.
        lo, hi = self.text_start, self.vocab_size
        keep = [int(i) for i in ids if lo <= int(i) < hi and int(i) not in self._special]
        return self.tok.decode(keep, skip_special_tokens=True)

    def token_name(self, i: int) -> str | None:
        return self.tok.id_to_token(int(i))

    def check_layout(self, layout: VocabLayout) -> None:
        if self.vocab_size > layout.vocab_size:
            raise CheckpointError(f"{self.path}: {self.vocab_size} tokens do not fit vocabulary layout "
                                  f"{layout.fingerprint} of {layout.vocab_size} ids")
        _check_range("Chameleon", self.text_start, self.vocab_size, layout)
        if self.image_codes:
            r = self.image_range
            if layout.image_offset != CHAMELEON_IMAGE_OFFSET or r.stop > layout.image_offset + layout.image_codes:
                raise CheckpointError(f"{self.path}: image names at ids [{r.start}, {r.stop}) do not match layout "
                                      f"{layout.fingerprint} (image codes at [{layout.image_offset}, "
                                      f"{layout.image_offset + layout.image_codes}))")

    def save(self, root: str) -> dict:
        os.makedirs(root, exist_ok=True)
        dst = os.path.join(root, self.FILE)
        if os.path.abspath(dst) != os.path.abspath(self.path):
            shutil.copyfile(self.path, dst)
        return {"type": self.type_name, "file": self.FILE}


@register_tokenizer("text", "chameleon")
def _load_chameleon(spec: dict, root: str, device=None) -> ChameleonTextTokenizer:
    return ChameleonTextTokenizer(os.path.join(root, spec.get("file", ChameleonTextTokenizer.FILE)))


def check_text_tokenizer(tok, layout: VocabLayout) -> None:
    """Raise CheckpointError when ``tok``'s text ids fall outside ``layout``'s text range."""
    check = getattr(tok, "check_layout", None)
    if check is not None:
        check(layout)
