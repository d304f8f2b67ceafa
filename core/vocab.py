"""Joint vocabulary layout: where text, image codes, audio codes and control tokens live in one id space."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from .errors import InputError

SPECIAL_NAMES = ("bos", "pad", "eos", "unk", "boi", "eoi", "boa", "eoa", "eoh", "eom", "ins", "res")
# Printable names, as they appear in docs and in `aromni detok --show-special`.
SPECIAL_TEXT = {
    "bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "boi": "<boi>", "eoi": "<eoi>",
    "boa": "<boa>", "eoa": "<eoa>", "eoh": "<eoh>", "eom": "<eom>", "ins": "<-Ins->", "res": "<-Res->",
}


@dataclass(frozen=True)
class VocabLayout:
    """Token-id layout of one model.

    Image code c is id ``image_offset + c``; audio code c is id ``audio_offset + c``; text ids are
    ``[text_start, text_end)``. ``specials`` maps the names in SPECIAL_NAMES to ids.
    """

    name: str
    vocab_size: int
    text_start: int
    text_end: int
    image_offset: int
    image_codes: int
    audio_offset: int
    audio_codes: int
    specials: dict = field(default_factory=dict)
    image_tokens: int = 1024  # codes per image (32x32 for the 7B)

    def __post_init__(self) -> None:
        missing = [n for n in SPECIAL_NAMES if n not in self.specials]
        if missing:
            raise ValueError(f"vocab layout {self.name!r} lacks special tokens {missing}")
        spans = ((self.image_offset, self.image_codes, "image"), (self.audio_offset, self.audio_codes, "audio"),
                 (self.text_start, self.text_end - self.text_start, "text"))
        for lo, n, what in spans:
            if lo < 0 or n < 0 or lo + n > self.vocab_size:
                raise ValueError(f"{what} range [{lo}, {lo + n}) outside vocab of {self.vocab_size}")

    # --- specials as attributes -------------------------------------------------------------
    def __getattr__(self, name: str) -> int:
        if name.startswith("__") or name == "specials":
            raise AttributeError(name)
        specials = object.__getattribute__(self, "specials")
        if name in specials:
            return specials[name]
        raise AttributeError(name)

    # --- code <-> id --------------------------------------------------------------------------
    def image_id(self, code):
        """Image code(s) -> model id(s). Works on ints, numpy arrays and tensors."""
        return code + self.image_offset

    def image_code(self, tok):
        return tok - self.image_offset

    def audio_id(self, code):
        return code + self.audio_offset

    def audio_code(self, tok):
        return tok - self.audio_offset

    def is_image(self, tok) -> bool:
        return self.image_offset <= tok < self.image_offset + self.image_codes

    def is_audio(self, tok) -> bool:
        return self.audio_offset <= tok < self.audio_offset + self.audio_codes

    def is_text(self, tok) -> bool:
        return self.text_start <= tok < self.text_end

    @property
    def image_range(self) -> range:
        return range(self.image_offset, self.image_offset + self.image_codes)

    @property
    def audio_range(self) -> range:
        return range(self.audio_offset, self.audio_offset + self.audio_codes)

    @property
    def text_range(self) -> range:
        return range(self.text_start, self.text_end)

    def special_name(self, tok: int) -> str | None:
        for k, v in self.specials.items():
            if v == tok:
                return k
        return None

    # --- identity -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VocabLayout":
        d = dict(d)
        d["specials"] = {k: int(v) for k, v in d["specials"].items()}
        return cls(**d)

    @property
    def fingerprint(self) -> str:
        """Short id that changes whenever any id assignment changes: ``name:sha8``."""
        d = self.to_dict()
        d.pop("name")
        h = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}:{h}"

    def check_compatible(self, fingerprint: str | None, source: str = "token stream") -> None:
        """Reject a stream made for another layout (a stream without a fingerprint is accepted)."""
        if fingerprint and fingerprint != self.fingerprint:
            raise InputError(f"{source} was made for vocabulary layout {fingerprint}, but this model uses "
                             f"{self.fingerprint}; re-tokenize the input for this model")


def arom_layout() -> VocabLayout:
    """The AR-Omni / Chameleon-7B 65536-id layout (docs/formats.md, "Vocabulary")."""
    return VocabLayout(
        name="ar-omni",
        vocab_size=65536,
        text_start=16384,
        text_end=65536,
        image_offset=4,
        image_codes=8192,
        audio_offset=8724,
        audio_codes=4096,
        specials=dict(bos=0, pad=1, eos=2, unk=3, boi=8197, eoi=8196, boa=12821, eoa=12820, eoh=12830, eom=12831,
                      ins=12840, res=12841),
        image_tokens=1024,
    )


N_COMPACT_SPECIALS = 16  # ids 0..15; 12 used, 4 kept free for future control tokens


def compact_layout(text: int, image: int, audio: int, image_tokens: int, name: str = "compact") -> VocabLayout:
    """A dense layout for small models: specials, then text, then image codes, then audio codes.

    Total size is rounded up to a multiple of 64 (friendlier matmul shapes).
    """
    t0 = N_COMPACT_SPECIALS
    i0 = t0 + text
    a0 = i0 + image
    size = a0 + audio
    size = (size + 63) // 64 * 64
    specials = {n: i for i, n in enumerate(SPECIAL_NAMES)}
    return VocabLayout(name=name, vocab_size=size, text_start=t0, text_end=i0, image_offset=i0, image_codes=image,
                       audio_offset=a0, audio_codes=audio, specials=specials, image_tokens=image_tokens)


PRESETS = {"ar-omni": arom_layout}


def get_layout(name_or_dict) -> VocabLayout:
    if isinstance(name_or_dict, VocabLayout):
        return name_or_dict
    if isinstance(name_or_dict, dict):
        return VocabLayout.from_dict(name_or_dict)
    if name_or_dict in PRESETS:
        return PRESETS[name_or_dict]()
    raise InputError(f"unknown vocabulary layout {name_or_dict!r} (known: {', '.join(PRESETS)})")
