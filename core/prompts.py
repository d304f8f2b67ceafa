"""Prompt templates (docs/formats.md) and training examples built from them.

Every string segment is encoded on its own and the pieces are concatenated, exactly as the reference
does (``encode(s, add_special_tokens=False)`` per segment; leading spaces belong to the segment).
"""
from __future__ import annotations

from dataclasses import dataclass

from .tokens import audio_block, image_block
from .vocab import VocabLayout

DEFAULT_INSTRUCTIONS = {
    "tts": "Convert this text into speech.",
    "asr": "Can you please convert this speech into written text?",
    "caption": "Describe this image.",
    "t2i": "Create a picture that matches the essence of this text.",
    "chat": "Please acknowledge the user's vocal input, create a textual response.",
    "s2i": "Please transcribe the user's vocal input, create a picture of it.",
}
TASKS = ("tts", "asr", "caption", "t2i", "s2i", "text", "chat")


@dataclass
class PromptContext:
    """What a prompt builder needs: the layout, a text encoder and per-model overrides."""

    vocab: VocabLayout
    encode: object  # callable str -> list[int] (joint ids)
    instructions: dict | None = None

    @classmethod
    def of(cls, omni) -> "PromptContext":
        return cls(omni.vocab, omni.text.encode, (omni.prompts or {}).get("instructions"))

    def instruction(self, task: str, override: str | None = None) -> str:
        if override is not None:
            return override
        return (self.instructions or {}).get(task, DEFAULT_INSTRUCTIONS.get(task, ""))


def _seg(ctx: PromptContext, *parts) -> list[int]:
    """Concatenate parts: str segments are encoded one by one, lists of ids are taken as they are."""
    out: list[int] = []
    for p in parts:
        if isinstance(p, str):
            if p:
                out += list(ctx.encode(p))
        else:
            out += [int(t) for t in p]
    return out


def tts_prompt(ctx: PromptContext, text: str, instruction: str | None = None, bos: bool = True) -> list[int]:
    v = ctx.vocab
    return _seg(ctx, [v.bos] if bos else [], "USER:", ctx.instruction("tts", instruction), "This is input: ", text,
                [v.eoh], "GPT:")


def asr_prompt(ctx: PromptContext, audio_codes, instruction: str | None = None, bos: bool = True) -> list[int]:
    v = ctx.vocab
    return _seg(ctx, [v.bos] if bos else [], "USER:", ctx.instruction("asr", instruction), audio_block(audio_codes, v),
                [v.eoh], "GPT:")


def caption_prompt(ctx: PromptContext, image_codes, instruction: str | None = None, bos: bool = True) -> list[int]:
    v = ctx.vocab
    return _seg(ctx, [v.bos] if bos else [], "USER:", image_block(image_codes, v), ctx.instruction("caption", instruction),
                [v.eoh], "GPT:")


def t2i_prompt(ctx: PromptContext, text: str, instruction: str | None = None, bos: bool = True) -> list[int]:
    """Note the leading spaces in " This is input: " and " GPT:", which differ from TTS.
    The image decoder appends ``<boi>`` itself."""
    v = ctx.vocab
    return _seg(ctx, [v.bos] if bos else [], "USER:", ctx.instruction("t2i", instruction), " This is input: ", text,
                [v.eoh], " GPT:")


def chat_turn(ctx: PromptContext, text: str | None = None, image_codes: list | None = None, audio_codes=None,
              append: str | None = None) -> list[int]:
    """One user turn: "USER:" + images + [<boa> audio <eoa>] + text/append-text + <eoh> + "GPT:"."""
    v = ctx.vocab
    parts: list = ["USER:"]
    for codes in image_codes or []:
        parts.append(image_block(codes, v))
    if audio_codes is not None:
        parts.append(audio_block(audio_codes, v))
        parts.append(append if append is not None else ctx.instruction("chat"))
    elif text is not None:
        parts.append(text)
    return _seg(ctx, *parts, [v.eoh], "GPT:")


def chat_prompt(ctx: PromptContext, history: list[int], turn: list[int]) -> list[int]:
    """``<bos>`` + history' + turn. History has leading/trailing bos/eos stripped and ends with ``<eom>``."""
    v = ctx.vocab
    h = list(history)
    while h and h[0] in (v.bos, v.eos):
        h.pop(0)
    while h and h[-1] in (v.bos, v.eos):
        h.pop()
    if h and h[-1] != v.eom:
        h.append(v.eom)
    return [v.bos] + h + turn


def s2i_prompt(ctx: PromptContext, audio_codes, instruction: str | None = None) -> list[int]:
    """Speech -> image: a chat turn with audio and the "transcribe ... create a picture" append-text."""
    return [ctx.vocab.bos] + chat_turn(ctx, audio_codes=audio_codes, append=ctx.instruction("s2i", instruction))


# ----------------------------------------------------------------------------------------------
# Training examples: prompt + response + end marker, with the response length for tail weighting
# ----------------------------------------------------------------------------------------------
@dataclass
class Example:
    ids: list[int]
    task: str
    response_len: int  # tokens of the response (for the reference's tail up-weighting)


def build_example(ctx: PromptContext, task: str, *, text: str | None = None, image_codes=None, audio_codes=None,
                  transcript: str | None = None, instruction: str | None = None) -> Example:
    """One training sequence in the model's templates; ends with ``<eom>``.

    tts: text -> <boa> audio <eoa>;  asr: audio -> text;  caption: image -> text;  t2i: text -> <boi> image <eoi>;
    s2i: audio -> <-Ins-> transcript <-Res-> <boi> image <eoi>;  text: plain text after <bos>.
    """
    v = ctx.vocab
    if task == "tts":
        prompt, resp = tts_prompt(ctx, text, instruction), audio_block(audio_codes, v)
    elif task == "asr":
        prompt, resp = asr_prompt(ctx, audio_codes, instruction), _seg(ctx, text)
    elif task == "caption":
        prompt, resp = caption_prompt(ctx, image_codes, instruction), _seg(ctx, text)
    elif task == "t2i":
        prompt, resp = t2i_prompt(ctx, text, instruction), image_block(image_codes, v)
    elif task == "s2i":
        prompt = s2i_prompt(ctx, audio_codes, instruction)
        resp = [v.ins] + _seg(ctx, transcript or text) + [v.res] + image_block(image_codes, v)
    elif task == "text":
        prompt, resp = [v.bos], _seg(ctx, text)
    else:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    resp = resp + [v.eom]
    return Example(prompt + resp, task, len(resp))
